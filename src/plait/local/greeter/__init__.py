"""The gRPC demo: grpcio's canonical `helloworld.Greeter`, run by `plait up examples/grpc/mesh.yaml`.

`server` serves Greeter (SayHello, and plait's server-streaming SayHelloStream) on PORT;
`client` serves a small HTTP page on PORT that calls Greeter through its sidecar, so a browser
or curl can watch gRPC cross the mesh; `hello` is a one-shot command-line caller.
"""

GREETER_AUTHORITY = "greeter:50051"  # the mesh name a caller puts in :authority

"""The proxy keeps the TLS layer's 256 KiB read buffer off mmap (proxy/allocator.py).

uvloop reads decrypted bytes with `SSLObject.read(256 KiB)`: a 256 KiB allocation shrunk to
what was read. Above glibc's mmap threshold each such read maps fresh pages and faults on
them. Measured here the way the proxy does it: TLS records through memory BIOs, read with
uvloop's call, minor page faults counted over 400 reads, without and with the fix.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

READS = 400

_SCRIPT = textwrap.dedent(
    """
    import datetime, resource, ssl, sys
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if sys.argv[1] == "fixed":
        from plait.proxy import allocator
        assert allocator.keep_tls_reads_off_mmap()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    open(sys.argv[2] + "/cert.pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(sys.argv[2] + "/key.pem", "wb").write(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(sys.argv[2] + "/cert.pem", sys.argv[2] + "/key.pem")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())

    def one_read():
        client.write(b"GET / HTTP/1.1\\r\\nhost: web\\r\\n\\r\\n")
        s_in.write(c_out.read())
        assert server.read(256 * 1024)  # uvloop's SSL_READ_MAX_SIZE

    for _ in range(50):
        one_read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(int(sys.argv[3])):
        one_read()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str, tmp: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode, str(tmp), str(READS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tls_reads_stop_faulting_in_fresh_pages(tmp_path: Path) -> None:
    before = _faults("as-is", tmp_path)
    if before < READS:
        pytest.skip(f"this allocator does not map each read ({before} faults in {READS} reads)")
    after = _faults("fixed", tmp_path)
    assert after < READS // 10, (before, after)

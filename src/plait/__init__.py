"""plait, a service mesh. Importing the package puts the compiled data path in place of its
modules when a current build exists (plait.native_core)."""

from plait import native_core

native_core.install()

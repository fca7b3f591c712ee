"""The test suite of trio-noleader (a package, so that its helpers import as modules)."""

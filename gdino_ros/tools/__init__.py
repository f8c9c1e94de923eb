"""Console scripts; each module has ``main(argv=None) -> int`` and is registered in setup.cfg."""

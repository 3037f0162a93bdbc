"""Maintainer tools run with ``python -m``: fits that write the files shipped in ``labfast/detectors``."""

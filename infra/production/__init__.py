"""Production deployment: compose file, image, example facility config, and the bootstrap."""

"""The HTTP front door: an aiohttp reverse proxy that asks the core about every request."""

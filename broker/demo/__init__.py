"""The demo's sample upstream: a trusting legacy logistics API and its fake data.

Submodules are not imported here, so `broker.demo.data` stays usable without aiohttp.
"""

"""The provider stage: talking to a hosted model over fal's queue protocol, and a local stand-in.

Modules: `fal` (the protocol's vocabulary and the one table of outcomes, `classify`: pure),
`access` (where the API key may go, and its scrubbing), `client` (the protocol client over
aiohttp: the only module that sees aiohttp's errors), `tls` (the CLI's import of aiohttp, its CA
certificates loaded in a thread) and `emulator/` (a local server speaking the same protocol: the
default provider, the test double). Nothing is imported here: the client and
the emulator import aiohttp, which start-up avoids.
"""

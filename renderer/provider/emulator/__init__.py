"""The emulator: a local server speaking fal's queue protocol (the default provider, the test double).

Importing this package imports aiohttp: the package is the server.
"""

from renderer.provider.emulator.server import Emulator, EmulatorConfig, Faults, ServiceTime

__all__ = ["Emulator", "EmulatorConfig", "Faults", "ServiceTime"]

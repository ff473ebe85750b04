"""The emulator: a local server speaking fal's queue protocol (the default provider, the test double).

Modules: `server` (the aiohttp app: `Emulator`), `config` (`EmulatorConfig`), `routes` (the queue
protocol's handlers), `queue` (requests, worker slots, `ServiceTime`), `accounts` (per-credential
accounting), `outputs` (results, images, file URLs), `faults` (`Faults`: seeded hostile shapes)
and `pictures` (the deterministic images). Importing this package imports aiohttp: the package is the server.
"""

from renderer.provider.emulator.config import EmulatorConfig
from renderer.provider.emulator.faults import Faults
from renderer.provider.emulator.queue import ServiceTime
from renderer.provider.emulator.server import Emulator

__all__ = ["Emulator", "EmulatorConfig", "Faults", "ServiceTime"]

"""Simulated exchange feeds: a seeded, fault-injecting market generator and the loop that produces it.

The pure parts (instruments, prices, faults, generator, recovery) never touch Kafka; only `run` and
`session` (topic setup, producer, graceful stop; shared with k2_stream.replay) do.
"""

from k2_stream.simulator.faults import Event, FaultConfig, FaultStats, Stream
from k2_stream.simulator.generator import MarketSimulator, SimulatorConfig
from k2_stream.simulator.instruments import CATALOG, Instrument, instruments_for, simulated_exchanges
from k2_stream.simulator.recovery import RecoveryStore, load_recovery, recovery_path

__all__ = [
    "CATALOG",
    "Event",
    "FaultConfig",
    "FaultStats",
    "Instrument",
    "MarketSimulator",
    "RecoveryStore",
    "SimulatorConfig",
    "Stream",
    "instruments_for",
    "load_recovery",
    "recovery_path",
    "simulated_exchanges",
]

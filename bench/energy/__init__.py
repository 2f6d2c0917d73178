"""Energy and carbon: meters with named windows, honest source labels, grid intensity, forecasts."""

from bench.energy.meters import MeterSet, create_meters
from bench.energy.reading import EnergyReading

__all__ = ["EnergyReading", "MeterSet", "create_meters"]

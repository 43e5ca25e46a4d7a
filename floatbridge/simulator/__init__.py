"""Marketplace simulator: merchants of known archetypes emitting canonical CloudEvents (see docs/simulator.md)."""

from floatbridge.simulator.config import ARCHETYPES, DEFAULT_MIX, SimConfig, SimConfigError
from floatbridge.simulator.engine import Simulation, simulate, truth

__all__ = ["ARCHETYPES", "DEFAULT_MIX", "SimConfig", "SimConfigError", "Simulation", "simulate", "truth"]

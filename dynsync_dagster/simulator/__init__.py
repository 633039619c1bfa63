"""The built-in Dynamics 365 (Dataverse) Web API and Entra ID simulator (no Dagster here)."""

from .admin import SimulatorAdmin, SimulatorAdminError
from .faults import FaultInjector
from .generator import DatasetSpec
from .org import Org
from .simulator import Simulator
from .webapi import RequestRecord

__all__ = [
    "DatasetSpec",
    "FaultInjector",
    "Org",
    "RequestRecord",
    "Simulator",
    "SimulatorAdmin",
    "SimulatorAdminError",
]

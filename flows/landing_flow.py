"""Flows that take a landing folder: Prefect stores the folder's keyed token, never its path.

``landing_flow(parameter, **options)`` is ``prefect.flow`` for a flow with a landing folder
parameter. A caller may pass the folder's path (in process: the command line, tests) or its token
(a deployment, a parent flow that got one); the flow-run parameter Prefect stores is always the
token. ``Flow.serialize_parameters``, which every way of creating a flow run goes through (a top
level run, a subflow, a run on a work pool), is where the path is registered in this process and
replaced by its token (``medmeta.ingest.landings.landing_reference``). The flow body turns what it
got back into the folder with ``resolve_landing``. Deployments give the token themselves
(deployments/definitions.py): their parameters are stored as given.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import Flow

from medmeta.home import Home
from medmeta.ingest.landings import landing_reference
from medmeta.pseudonyms import Pseudonymizer, load_key


def home_pseudonymizer(home: str | None) -> Pseudonymizer:
    """The pseudonymizer of the home a flow was given (the key from the environment or the home)."""
    return Pseudonymizer(load_key(Home.at(home).key_file))


class LandingFlow(Flow):
    """A Prefect flow whose ``landing_parameter`` Prefect only ever holds as a keyed token."""

    def __init__(self, fn: Callable, landing_parameter: str, **options: Any):
        self.landing_parameter = landing_parameter
        super().__init__(fn=fn, **options)

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        stored = super().serialize_parameters(parameters)
        landing = parameters.get(self.landing_parameter)
        if landing is not None:
            stored[self.landing_parameter] = landing_reference(landing, home_pseudonymizer(parameters.get("home")))
        return stored

    def with_options(self, **options: Any) -> "LandingFlow":
        copy = super().with_options(**options)
        copy.__class__ = LandingFlow  # Flow.with_options builds a plain Flow
        copy.landing_parameter = self.landing_parameter
        return copy


def landing_flow(landing_parameter: str, **options: Any) -> Callable[[Callable], LandingFlow]:
    """``@flow(**options)`` for a flow whose ``landing_parameter`` is a landing folder."""

    def decorate(fn: Callable) -> LandingFlow:
        return LandingFlow(fn, landing_parameter, **options)

    return decorate

"""The one backend-selection mechanism (ntshim._backends.Family) and ntshim.refresh(), on
made-up backends so that every path runs on any machine."""

from __future__ import annotations

import pytest

import ntshim
from ntshim import _kernel
from ntshim._backends import Availability, Family, ProbedBackend
from ntshim.sync import registry as sync_registry
from ntshim.writewatch import registry


def _backend(name: str, available: bool = True, stops: bool = False, refuses: bool = False) -> type[ProbedBackend]:
    class Fake(ProbedBackend):
        summary = "made up"

        @classmethod
        def _probe(cls) -> Availability:
            return Availability(name, available, "" if available else f"{name} is missing", stops_selection=stops)

        @classmethod
        def serve(cls) -> str:
            if refuses:
                raise ntshim.BackendUnavailable(name, "refuses this")
            return name

    Fake.name = name
    return Fake


def _family(*backends: type[ProbedBackend]) -> Family[ProbedBackend]:
    classes = {b.name: b for b in backends}
    return Family("test", "NTSHIM_TEST_BACKEND", tuple(classes), classes.__getitem__, exhausted="works here")


def test_automatic_selection_passes_over_unavailable_and_refusing_backends() -> None:
    family = _family(_backend("a", available=False), _backend("b", refuses=True), _backend("c"))
    assert family.select(None).name == "b"  # no request: availability is enough
    assert family.select(None, lambda chosen: chosen.serve()) == "c"
    assert [b.backend for b in family.backends()] == ["a", "b", "c"]


def test_no_backend_left_names_the_refusals_or_else_why_none_was_available() -> None:
    refusing = _family(_backend("a", available=False), _backend("b", refuses=True))
    with pytest.raises(ntshim.BackendUnavailable, match=r"^no test backend works here: b: refuses this$") as e:
        refusing.select(None, lambda chosen: chosen.serve())
    assert e.value.backend is None
    missing = _family(_backend("a", available=False), _backend("b", available=False))
    with pytest.raises(
        ntshim.BackendUnavailable, match=r"^no test backend works here: a: a is missing; b: b is missing$"
    ):
        missing.select(None)


def test_a_backend_unavailable_for_this_user_stops_automatic_selection() -> None:
    family = _family(_backend("a", available=False, stops=True), _backend("b"))
    with pytest.raises(ntshim.BackendUnavailable, match="not passing to another backend.*NTSHIM_TEST_BACKEND") as e:
        family.select(None)
    assert e.value.backend == "a"


def test_a_requested_backend_is_validated_and_never_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    family = _family(_backend("a"), _backend("b", available=False), _backend("c", refuses=True))
    with pytest.raises(ntshim.BackendUnavailable, match="^b: b is missing$"):
        family.select("b")
    with pytest.raises(ntshim.BackendUnavailable, match="^c: refuses this$"):
        family.select("c", lambda chosen: chosen.serve())
    with pytest.raises(ValueError, match=r"^backend: unknown test backend 'z'; choose from a, b, c$"):
        family.select("z")
    with pytest.raises(TypeError, match="backend must be a str or None, not int"):
        family.requested(1)
    monkeypatch.setenv("NTSHIM_TEST_BACKEND", "z")
    with pytest.raises(ValueError, match=r"^NTSHIM_TEST_BACKEND: unknown test backend 'z'"):
        family.select(None)
    assert family.select("a").name == "a"  # the argument wins over the variable
    monkeypatch.setenv("NTSHIM_TEST_BACKEND", "c")
    assert family.requested(None) == "c"


def test_refresh_probes_the_kernel_and_every_family_again() -> None:
    families = (registry.FAMILY, sync_registry.FAMILY)
    before = [b for family in families for b in family.backends()]
    uffd = _kernel.userfaultfd()
    ntshim.refresh()
    after = [b for family in families for b in family.backends()]
    assert after == before  # nothing changed on the machine ...
    assert all(a is not b for a, b in zip(after, before))  # ... but every backend probed again
    assert _kernel.userfaultfd() is not uffd

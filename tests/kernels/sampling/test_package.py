"""yaie.kernels.sampling's public names: each resolves (the torch ones on first use, through the
package's lazy __getattr__) to the object its module defines."""

from __future__ import annotations

import importlib

import pytest

import yaie.kernels.sampling as sampling


@pytest.mark.parametrize("name", sampling.__all__)
def test_every_public_name_resolves_to_its_module_object(name: str) -> None:
    module = sampling._TORCH_NAMES.get(name, "config")
    defining = importlib.import_module(f"yaie.kernels.sampling.{module}")
    assert getattr(sampling, name) is getattr(defining, name)


def test_an_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError):
        sampling.no_such_name  # noqa: B018

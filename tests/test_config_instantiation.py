"""The one ``_target_`` builder every config group goes through."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from strategies.config_instantiation import instantiate_config


@dataclass(frozen=True)
class Shape:
    sides: int = 3


@dataclass(frozen=True)
class Square(Shape):
    sides: int = 4

    def __post_init__(self) -> None:
        if self.sides != 4:
            raise ValueError(f"a square has 4 sides, got {self.sides}")


HERE = __name__


def test_builds_the_named_subclass_with_the_other_keys() -> None:
    built = instantiate_config(
        {"name": "sq", "_target_": f"{HERE}.Square", "sides": 4}, Shape, group="shape"
    )
    assert built == Square(4)


def test_default_only_for_the_off_entry() -> None:
    assert instantiate_config({}, Shape, group="shape", default=Shape) == Shape()
    assert instantiate_config({"name": "none"}, Shape, group="shape", default=Shape)
    with pytest.raises(ValueError, match=r"conf/shape/circle\.yaml"):
        instantiate_config({"name": "circle"}, Shape, group="shape", default=Shape)
    with pytest.raises(ValueError, match="has no _target_"):
        instantiate_config(
            {"name": "none", "sides": 5}, Shape, group="shape", default=Shape
        )
    with pytest.raises(ValueError, match="has no _target_"):
        instantiate_config({}, Shape, group="shape")


@pytest.mark.parametrize(
    "target", ["no.such.module.Class", f"{HERE}.Missing", "Square", ""]
)
def test_unimportable_paths_are_named(target: str) -> None:
    with pytest.raises(ValueError, match=r"^shape 'x': cannot import"):
        instantiate_config({"name": "x", "_target_": target}, Shape, group="shape")


def test_a_class_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(ValueError, match=r"is not a .*Square class"):
        instantiate_config(
            {"name": "x", "_target_": f"{HERE}.Shape"}, Square, group="shape"
        )
    with pytest.raises(ValueError, match="is not a"):
        instantiate_config(
            {"name": "x", "_target_": f"{HERE}.HERE"}, Shape, group="shape"
        )


def test_reserved_keys_are_not_arguments_and_errors_name_the_config() -> None:
    spec = {"name": "sq", "fraction": 0.3, "_target_": f"{HERE}.Square"}
    with pytest.raises(TypeError, match=r"^shape 'sq': "):
        instantiate_config(spec, Shape, group="shape")
    assert (
        instantiate_config(spec, Shape, group="shape", reserved=("name", "fraction"))
        == Square()
    )
    with pytest.raises(ValueError, match=r"^shape 'sq': a square has 4 sides"):
        instantiate_config(
            {**spec, "sides": 5}, Shape, group="shape", reserved=("name", "fraction")
        )

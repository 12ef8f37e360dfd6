"""Typed options (optkit.options): declared once as a frozen dataclass, checked when the plan is built."""
from dataclasses import dataclass
from typing import Optional

import pytest

from optkit import options, steps
from optkit.errors import UserError
from optkit.options import option

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable


@dataclass(frozen=True)
class Demo:
    ratio: float = option(0.5, "share removed", min=0.0, max=1.0, max_open=True)
    mode: str = option("fast", "how", choices=("fast", "slow"))
    rounds: int = option(1, "repeats", min=1)
    strict: bool = option(False, "fail instead of skipping")
    keep: Optional[bool] = option(None, "None: decide from the model")


def test_strings_become_typed_values_and_defaults_fill_the_rest():
    got = options.parse(Demo, {"ratio": "0.25", "strict": "yes", "keep": "false"}, owner="demo")
    assert got == Demo(ratio=0.25, mode="fast", rounds=1, strict=True, keep=False)
    assert options.parse(Demo, {"keep": "none"}, owner="demo").keep is None
    assert options.parse(Demo, {"ratio": 0}, owner="demo").ratio == 0.0 and \
        isinstance(options.parse(Demo, {"ratio": 0}, owner="demo").ratio, float)   # ints from plan.json


@pytest.mark.parametrize("raw, message", [
    ({"ratio": "1"}, r"demo: ratio must be in \[0, 1\), got 1.0"),
    ({"ratio": "-0.1"}, r"ratio must be in \[0, 1\)"),
    ({"mode": "medium"}, "demo: mode must be one of fast, slow, got 'medium'"),
    ({"rounds": "0"}, "rounds must be a positive integer, got 0"),
    ({"rounds": "two"}, "demo: rounds must be a positive integer, got 'two'"),
    ({"strict": "maybe"}, "option 'strict' expects bool"),
    ({"rounds": True}, "rounds must be a positive integer, got True"),
    ({"ratio": "half"}, "demo: option 'ratio' expects float, got 'half'"),
    ({"speed": "1"}, r"demo has no option 'speed' \(options: keep, mode, ratio, rounds, strict\)"),
])
def test_bad_values_are_one_line_user_errors(raw, message):
    with pytest.raises(UserError, match=message):
        options.parse(Demo, raw, owner="demo")


def test_descriptions_name_type_default_choices_and_range():
    text = {i.name: i.describe() for i in options.fields(Demo)}
    assert text["ratio"] == "ratio (float, default 0.5, in [0, 1)): share removed"
    assert text["mode"] == "mode (str, default 'fast', one of fast | slow): how"
    assert text["keep"].startswith("keep (bool, default None")


def test_every_registered_step_declares_a_frozen_options_dataclass():
    import dataclasses

    for name, step in steps.registry().items():
        assert dataclasses.is_dataclass(step.options), name
        assert step.options.__dataclass_params__.frozen, name
        defaults = step.parse_options({})
        assert defaults == options.defaults(step.options), name
        for info in step.option_infos():
            assert info.help, f"{name}.{info.name} has no help"


def test_an_old_style_option_table_still_works_and_is_typed():
    step = steps.Step("legacy", "", lambda m, c, **o: None, options={"n": (int, 3, "count")})
    assert step.parse_options({"n": "5"}) == {"n": 5}
    with pytest.raises(UserError, match="step 'legacy': option 'n' expects int"):
        step.parse_options({"n": "x"})

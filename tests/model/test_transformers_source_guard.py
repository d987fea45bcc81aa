"""model/transformers_source_guard.py: the copied functions' digests are the installed transformers' text, a
function whose text differs or is missing is named, and a module without source counts as changed throughout."""

from __future__ import annotations

import inspect

from transformers.models.phi3 import modeling_phi3

from lorakit.model import fused_projections, joint_rotary
from lorakit.model.transformers_source_guard import CopiedSource, changed_functions, function_digests


def test_the_copiers_digests_are_the_installed_phi3_text():
    digests = function_digests(inspect.getsource(modeling_phi3))
    for copied in (joint_rotary.COPIED_SOURCE, fused_projections.COPIED_SOURCE):
        assert copied.module == modeling_phi3.__name__
        assert {name: digests[name] for name in copied.sha256} == copied.sha256
        assert copied.changed() == ()


def test_a_changed_or_missing_function_is_named_and_nothing_else():
    source = inspect.getsource(modeling_phi3)
    copied = joint_rotary.COPIED_SOURCE.sha256
    # One character of a method's body
    assert changed_functions(
        source.replace("attn_output = self.o_proj(attn_output)", "attn_output = self.o_proj(attn_output) "), copied
    ) == ("Phi3Attention.forward",)
    assert changed_functions(source.replace("def apply_rotary_pos_emb(", "def apply_rope("), copied) == (
        "apply_rotary_pos_emb",
    )


def test_a_module_without_source_counts_every_copied_function_as_changed(caplog):
    import logging

    builtin = CopiedSource("model/x.py", "5.25.0", "sys", {"Phi3Attention.forward": "0" * 16, "rotate_half": "1" * 16})
    assert builtin.changed() == ("Phi3Attention.forward", "rotate_half")
    log = logging.getLogger("lorakit.model.x")
    with caplog.at_level("WARNING", logger="lorakit.model.x"):
        assert builtin.holds(log, "x", "attention forward") is False
    assert [r.getMessage() for r in caplog.records] == [
        f"x off: transformers {__import__('transformers').__version__}'s Phi3Attention.forward, rotate_half differ "
        "from the 5.25.0 text model/x.py copies; the model keeps transformers' own attention forward"
    ]

"""LoRA tuning on tiny models: masked loss, learning, checkpoints, resumption, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.llm import lora
from models.llm.base_model import load_base_model
from models.llm.generate import Generator
from models.llm.lora import (
    IGNORE_INDEX,
    LoraSettings,
    collate,
    encode_example,
    latest_checkpoint,
    train_lora,
)
from models.llm.prompts import Example, HistoryEvent, render_prompt

FAST = dict(rank=4, alpha=8, lr=2e-2, batch_size=2, max_length=128, checkpoint_every=2)


def repeated_examples(tokenizer=None, n: int = 4) -> list[Example]:
    history = [HistoryEvent("click", "blue denim jacket", "outerwear", "blue", "levis"),
               HistoryEvent("purchase", "white cotton shirt", "tops", "white", "cos")]
    prompt = render_prompt(history, "title", tokenizer)
    return [Example(prompt, "red linen dress", "title", "u1", "i1", 2) for _ in range(n)]


def test_encoding_masks_the_prompt_and_ends_with_eos(tiny_llama: Path) -> None:
    _, tok = load_base_model(tiny_llama, device="cpu")
    ex = repeated_examples(tok, 1)[0]
    enc, truncated = encode_example(tok, ex, 512, tok.eos_token_id)
    answer = tok("red linen dress", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert not truncated
    assert enc.labels[-len(answer):] == answer == enc.input_ids[-len(answer):]
    assert set(enc.labels[:-len(answer)]) == {IGNORE_INDEX}
    short, truncated = encode_example(tok, ex, 16, tok.eos_token_id)
    assert truncated and len(short.input_ids) == 16 and short.labels[-len(answer):] == answer
    batch = collate([enc, short], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(enc.input_ids))
    assert batch["attention_mask"][1].sum() == 16
    assert (batch["labels"][1, 16:] == IGNORE_INDEX).all()


def test_loss_decreases_and_outputs_are_written(tiny_model: Path, tmp_path: Path) -> None:
    _, tok = load_base_model(tiny_model, device="cpu")
    settings = LoraSettings(**FAST, steps=8)
    result = train_lora(tiny_model, repeated_examples(tok), settings, tmp_path / "run",
                        progress=False, data_hash="abc123")
    assert result.steps == 8 and len(result.losses) == 8
    assert result.losses[-1] < 0.7 * result.losses[0]
    assert (result.adapter_dir / "adapter_config.json").is_file()
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["data_hash"] == "abc123"
    assert manifest["model_version"] == result.model_version
    assert manifest["hyper_parameters"]["rank"] == 4
    assert manifest["final_loss"] == pytest.approx(result.losses[-1])
    assert manifest["seconds_per_step"] > 0 and manifest["tasks"] == {"title": 4}
    # the merged export is a plain checkpoint: it loads without peft and answers like the adapter
    merged = Generator(result.merged_dir, device="cpu")
    adapted = Generator(result.adapter_dir, device="cpu")
    prompts = [e.prompt for e in repeated_examples(tok, 1)]
    assert merged.generate(prompts, max_new_tokens=5).texts == \
        adapted.generate(prompts, max_new_tokens=5).texts


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_llama: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    _, tok = load_base_model(tiny_llama, device="cpu")
    examples = repeated_examples(tok, 6)
    settings = LoraSettings(**FAST, steps=5)
    straight = train_lora(tiny_llama, examples, settings, tmp_path / "a", progress=False,
                          export_merged=False)
    real_step, calls = lora._one_step, []

    def crash_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(lora, "_one_step", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny_llama, examples, settings, tmp_path / "b", progress=False)
    monkeypatch.setattr(lora, "_one_step", real_step)
    assert latest_checkpoint(tmp_path / "b").name == "step-0000002"  # checkpoint_every=2
    resumed = train_lora(tiny_llama, examples, settings, tmp_path / "b", progress=False,
                         export_merged=False)
    assert (resumed.start_step, resumed.steps, len(resumed.losses)) == (2, 5, 5)
    # same data order, weights, optimizer and RNG state: the uninterrupted run's loss curve
    assert torch.allclose(torch.tensor(resumed.losses), torch.tensor(straight.losses), atol=1e-5)


def test_more_steps_extend_a_finished_run_and_resume_false_restarts(tiny_llama: Path,
                                                                      tmp_path: Path) -> None:
    examples = repeated_examples(None, 4)
    first = train_lora(tiny_llama, examples, LoraSettings(**FAST, steps=3), tmp_path,
                       progress=False, export_merged=False)
    again = train_lora(tiny_llama, examples, LoraSettings(**FAST, steps=3), tmp_path,
                       progress=False, export_merged=False)
    assert (again.start_step, again.steps, again.losses) == (3, 3, first.losses)  # nothing redone
    longer = train_lora(tiny_llama, examples, LoraSettings(**FAST, steps=5), tmp_path,
                        progress=False, export_merged=False)
    assert (longer.start_step, longer.steps, longer.losses[:3]) == (3, 5, first.losses)
    fresh = train_lora(tiny_llama, examples, LoraSettings(**FAST, steps=2), tmp_path,
                       resume=False, progress=False, export_merged=False)
    assert (fresh.start_step, fresh.steps) == (0, 2)


def test_resume_refuses_a_checkpoint_of_another_run(tiny_llama: Path, tmp_path: Path) -> None:
    examples = repeated_examples(None, 2)
    train_lora(tiny_llama, examples, LoraSettings(**FAST, steps=1), tmp_path, progress=False,
               data_hash="v1", export_merged=False)
    with pytest.raises(ValueError, match="data_hash"):
        train_lora(tiny_llama, examples, LoraSettings(**FAST, steps=2), tmp_path,
                   progress=False, data_hash="v2", export_merged=False)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    model, _ = load_base_model(folder, device="cpu")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_held_out_loss_is_tracked_and_the_best_adapter_is_kept(tiny_llama: Path,
                                                                tmp_path: Path) -> None:
    _, tok = load_base_model(tiny_llama, device="cpu")
    examples = repeated_examples(tok)
    settings = LoraSettings(**{**FAST, "checkpoint_every": 0}, steps=12, eval_every=3)
    result = train_lora(tiny_llama, examples, settings, tmp_path / "run", progress=False,
                        eval_examples=examples[:2])
    curve = result.eval_curve
    assert [e["step"] for e in curve] == [0, 3, 6, 9, 12]  # the base model's loss comes first
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]  # memorised: held-out = train prompts
    assert not result.converged and result.best_step == min(curve, key=lambda e: e["loss"])["step"]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["held_out_curve"] == curve and manifest["best_step"] == result.best_step
    assert manifest["train_seconds_to_best"] == pytest.approx(
        sum(result.step_seconds[:result.best_step]), abs=1e-3)


def test_patience_stops_the_run_and_restores_the_best_weights(tiny_llama: Path,
                                                              tmp_path: Path) -> None:
    _, tok = load_base_model(tiny_llama, device="cpu")
    examples = repeated_examples(tok)
    # no later evaluation can beat step 0 by 1e9, so patience 2 stops after two evaluations
    settings = LoraSettings(**{**FAST, "checkpoint_every": 0}, steps=50, eval_every=2, patience=2,
                            min_delta=1e9)
    result = train_lora(tiny_llama, examples, settings, tmp_path / "run", progress=False,
                        eval_examples=examples[:2])
    assert result.converged and result.steps == 4 and result.best_step == 0
    # the kept adapter is the untrained one (LoRA's B starts at zero): merged == base
    base, merged = _weights(tiny_llama), _weights(result.merged_dir)
    assert all(torch.equal(base[k], merged[k]) for k in base)
    # a stopped run stays stopped when resumed with a bigger budget
    again = train_lora(tiny_llama, examples, LoraSettings(**{**FAST, "checkpoint_every": 0},
                                                          steps=80, eval_every=2, patience=2,
                                                          min_delta=1e9),
                       tmp_path / "run", progress=False, eval_examples=examples[:2])
    assert again.steps == 4 and again.converged


def test_an_adapter_trained_elsewhere_merges_into_the_local_base(tiny_llama: Path,
                                                                 tmp_path: Path) -> None:
    _, tok = load_base_model(tiny_llama, device="cpu")
    result = train_lora(tiny_llama, repeated_examples(tok), LoraSettings(**FAST, steps=4),
                        tmp_path / "run", progress=False)
    merged = lora.merge_adapter(tiny_llama, result.out_dir, tmp_path / "adopted")
    want, got = _weights(result.merged_dir), _weights(merged)
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    assert json.loads((merged / "stylestream_model.json").read_text())["model_version"] == \
        result.model_version
    with pytest.raises(ValueError, match="no LoRA adapter"):
        lora.merge_adapter(tiny_llama, tmp_path, tmp_path / "nothing")

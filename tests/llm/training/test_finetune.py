"""Finetuning: the book's loop reproduced step for step, the fast loop's objective, LoRA, checkpoints, bad data."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from llm.assets import INSTRUCTION_DATA
from llm.checkpoints.load import load_checkpoint, load_state_dict
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from llm.decoding.sampling import SamplingParams
from llm.model import GPTModel
from llm.prompts import render_prompt
from llm.tokenizer import Tokenizer
from llm.training.data import DataError, InstructionDataset, collate_batch, load_records, split_records
from llm.training.finetune import build_model, finetune
from llm.training.loops import file_order_batches, mean_batch_loss, token_loss_sum, train_fast
from llm.training.lora import LinearWithLoRA, add_lora, merge_lora
from llm.training.recipe import FinetuneConfig, FinetuneError
from tests.llm.book_reference import BookGPTModel
from tests.llm.conftest import generate_ids, make_model

SHAPE = {"emb_dim": 32, "n_layers": 2, "n_heads": 4, "context_length": 128}
CONFIG = GPTConfig(vocab_size=50257, qkv_bias=False, **SHAPE)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 chapter-7 records: 34 train (4 batches of 8), 4 test, 2 validation."""
    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(json.loads(INSTRUCTION_DATA.read_text())[:40]))
    return path


def tiny_finetune(data: Path, out: Path, **overrides: object) -> FinetuneConfig:
    fields = dict(init="gpt2-small", shape=SHAPE, lr=1e-3, eval_every=0, progress=False, plot=False, precision="fp32")
    return FinetuneConfig(data=data, out=out, **{**fields, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# The book's chapter-7 code, as printed (sections 7.2-7.6), with train_model_simple also keeping every step's loss.


def book_format_input(entry):
    instruction_text = (
        f"Below is an instruction that describes a task. "
        f"Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


class BookInstructionDataset(Dataset):
    def __init__(self, data, tokenizer):
        self.data = data
        self.encoded_texts = []
        for entry in data:
            instruction_plus_input = book_format_input(entry)
            response_text = f"\n\n### Response:\n{entry['output']}"
            full_text = instruction_plus_input + response_text
            self.encoded_texts.append(tokenizer.encode(full_text))

    def __getitem__(self, index):
        return self.encoded_texts[index]

    def __len__(self):
        return len(self.data)


def book_custom_collate_fn(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None, device="cpu"):
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst, targets_lst = [], []
    for item in batch:
        new_item = item.copy()
        new_item += [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs = torch.tensor(padded[:-1])
        targets = torch.tensor(padded[1:])
        mask = targets == pad_token_id
        indices = torch.nonzero(mask).squeeze()
        if indices.numel() > 1:
            targets[indices[1:]] = ignore_index
        if allowed_max_length is not None:
            inputs = inputs[:allowed_max_length]
            targets = targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)


def book_calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def book_calc_loss_loader(data_loader, model, device, num_batches=None):
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i < num_batches:
            total_loss += book_calc_loss_batch(input_batch, target_batch, model, device).item()
        else:
            break
    return total_loss / num_batches


def book_evaluate_model(model, train_loader, val_loader, device, eval_iter):
    model.eval()
    with torch.no_grad():
        train_loss = book_calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = book_calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def book_train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter):
    step_losses, val_losses = [], []
    global_step = -1
    for _epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = book_calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            step_losses.append(loss.item())
            global_step += 1
            if global_step % eval_freq == 0:
                val_losses.append(book_evaluate_model(model, train_loader, val_loader, device, eval_iter)[1])
    return step_losses, val_losses


def book_chapter_7(data_path: Path, initial: dict[str, torch.Tensor], config: GPTConfig) -> tuple[list, list]:
    with open(data_path) as file:
        data = json.load(file)
    train_portion = int(len(data) * 0.85)
    test_portion = int(len(data) * 0.1)
    train_data = data[:train_portion]
    val_data = data[train_portion + test_portion :]
    tokenizer = Tokenizer()  # the book's tiktoken "gpt2" encoding, built offline
    customized_collate_fn = partial(book_custom_collate_fn, device="cpu", allowed_max_length=1024)
    torch.manual_seed(123)
    train_loader = DataLoader(
        BookInstructionDataset(train_data, tokenizer), batch_size=8, collate_fn=customized_collate_fn,
        shuffle=True, drop_last=True, num_workers=0,
    )  # fmt: skip
    val_loader = DataLoader(
        BookInstructionDataset(val_data, tokenizer), batch_size=8, collate_fn=customized_collate_fn,
        shuffle=False, drop_last=False, num_workers=0,
    )  # fmt: skip
    model = BookGPTModel({**config.to_dict()})
    missing, unexpected = model.load_state_dict(initial, strict=False)
    assert not unexpected and all(k.endswith(".att.mask") for k in missing)
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.00005, weight_decay=0.1)
    return book_train_model_simple(model, train_loader, val_loader, optimizer, "cpu", 2, eval_freq=3, eval_iter=2)


def test_exact_reproduces_the_books_per_step_losses(small_data: Path, tmp_path: Path) -> None:
    start = tmp_path / "start.safetensors"
    initial = make_model(CONFIG, seed=3)
    save_checkpoint(initial, start)
    expected_steps, expected_val = book_chapter_7(small_data, initial.state_dict(), CONFIG)

    config = FinetuneConfig(
        data=small_data, out=tmp_path / "exact.safetensors", checkpoint=start, exact=True,
        eval_every=3, eval_batches=2, progress=False, plot=False,
    )  # fmt: skip
    result = finetune(config)
    assert len(expected_steps) == 8  # 2 epochs of 34 // 8 batches; the evaluations reshuffle epoch 2's order
    assert result.history.step_losses == pytest.approx(expected_steps, rel=1e-5, abs=1e-6)
    assert [e.val_loss for e in result.history.evals] == pytest.approx(expected_val, rel=1e-5, abs=1e-6)
    assert result.precision == "fp32"


def test_exact_refuses_what_the_book_does_not_do(small_data: Path, tmp_path: Path) -> None:
    for extra in ({"grad_accum": 2}, {"compile": True}, {"precision": "bf16"}):
        with pytest.raises(FinetuneError, match="--exact"):
            finetune(tiny_finetune(small_data, tmp_path / "x.safetensors", exact=True, **extra))


# ---------------------------------------------------------------------------------------------------------------
# The fast loop optimises the same loss


def test_the_head_on_kept_positions_gives_the_books_loss_and_logits() -> None:
    model = make_model(CONFIG, seed=1)
    tokenizer = Tokenizer()
    records = split_records(load_records(INSTRUCTION_DATA)).train[:5]
    batch = collate_batch(InstructionDataset(records, tokenizer).examples, mask_prompt=True)
    with torch.no_grad():
        logits = model(batch[0])
        assert torch.allclose(model.out_head(model.hidden_states(batch[0])), logits, atol=1e-6)
        book = F.cross_entropy(logits.flatten(0, 1), batch[1].flatten())
        ours = token_loss_sum(model.hidden_states, model, batch) / (batch[1] != -100).sum()
    assert ours.item() == pytest.approx(book.item(), rel=1e-6)


def test_accumulated_micro_batches_weigh_every_token_equally() -> None:
    model = make_model(CONFIG, seed=2).train()
    examples = InstructionDataset(load_records(INSTRUCTION_DATA)[:6], Tokenizer()).examples
    trunk = model.hidden_states
    whole = collate_batch(examples)
    token_loss_sum(trunk, model, whole).div((whole[1] != -100).sum()).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    parts = [collate_batch(examples[:2]), collate_batch(examples[2:])]  # padded to different lengths
    counted = sum((t != -100).sum() for _, t in parts)
    for part in parts:
        (token_loss_sum(trunk, model, part) / counted).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-7, rtol=1e-4), name


def test_a_few_fast_steps_lower_the_validation_loss(small_data: Path, tmp_path: Path) -> None:
    config = tiny_finetune(small_data, tmp_path / "fast.safetensors", max_steps=8)
    before = build_model(config, "cpu")
    val = InstructionDataset(split_records(load_records(small_data)).validation, Tokenizer())
    initial_val = mean_batch_loss(before, file_order_batches(val, config, "cpu"), "cpu")
    result = finetune(config)
    assert len(result.history.step_losses) == 8 and result.history.tokens > 0
    assert result.val_loss < initial_val - 0.2
    assert result.history.step_losses[-1] < result.history.step_losses[0]


def test_the_saved_checkpoint_loads_and_generates(small_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft.safetensors"
    result = finetune(tiny_finetune(small_data, out, max_steps=3, save_book=True, plot=True, eval_every=1))
    assert result.checkpoint == out and result.book_checkpoint == out.with_suffix(".pth")
    assert result.plot is not None and result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads(result.history_file.read_text())
    assert len(history["history"]["step_losses"]) == 3 and len(history["history"]["evals"]) == 3
    loaded = load_checkpoint(out)
    assert loaded.config == replace(GPTConfig.from_name("gpt2-small", **SHAPE), drop_rate=0.0)
    assert json.loads(loaded.metadata["examples"])["train"] == 34
    book = load_checkpoint(out.with_suffix(".pth"), n_heads=4)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, book.model.state_dict()[name]), name
    prompt = Tokenizer().encode(render_prompt("Name a color."))
    tokens = generate_ids(loaded.model, prompt, SamplingParams(max_new_tokens=5))
    assert 0 < len(tokens) <= 5


def test_bf16_weights_halve_the_file(small_data: Path, tmp_path: Path) -> None:
    fp32 = finetune(tiny_finetune(small_data, tmp_path / "a.safetensors", max_steps=1)).checkpoint
    bf16 = finetune(tiny_finetune(small_data, tmp_path / "b.safetensors", max_steps=1, save_dtype="bf16")).checkpoint
    assert bf16.stat().st_size < 0.51 * fp32.stat().st_size
    assert load_checkpoint(bf16).model.tok_emb.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------
# LoRA


def test_lora_trains_only_the_adapters_and_merges_into_the_weights(small_data: Path, tmp_path: Path) -> None:
    model = make_model(CONFIG, seed=4)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, rank=2, alpha=4.0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.endswith(("lora.A", "lora.B"))
    }
    split = split_records(load_records(small_data))
    tokenizer = Tokenizer()
    config = tiny_finetune(small_data, tmp_path / "unused", checkpoint=None, lr=1e-2, max_steps=3)
    train_fast(model, InstructionDataset(split.train, tokenizer), InstructionDataset(split.validation, tokenizer),
               config, "cpu", None)  # fmt: skip
    for name, tensor in model.state_dict().items():
        plain = name.replace(".linear.", ".")
        if plain in base:
            assert torch.equal(tensor, base[plain]), f"{name} changed"
    expected = dict(base)
    for name, module in model.named_modules():
        if isinstance(module, LinearWithLoRA):
            assert module.lora.B.abs().sum() > 0
            delta = 4.0 * (module.lora.A @ module.lora.B).T  # (out, in): the book's alpha * (A @ B), transposed
            expected[f"{name}.weight"] = base[f"{name}.weight"] + delta
    merged = merge_lora(model).state_dict()
    assert set(merged) == set(base)
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-7), name


def test_lora_finetune_writes_a_plain_checkpoint_that_differs_only_in_linear_weights(
    small_data: Path, tmp_path: Path
) -> None:
    start = tmp_path / "base.safetensors"
    save_checkpoint(make_model(CONFIG, seed=5), start)
    out = tmp_path / "lora.safetensors"
    finetune(tiny_finetune(small_data, out, init=None, shape={}, checkpoint=start, lora_rank=2, lr=1e-2, max_steps=2))
    before, _, _ = load_state_dict(start)
    after, _, _ = load_state_dict(out)
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("weight") for k in changed)
    assert not any(k.startswith(("tok_emb", "pos_emb")) or "norm" in k for k in changed)


# ---------------------------------------------------------------------------------------------------------------
# Bad data and bad options fail before training starts


def test_bad_data_fails_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('[{"instruction": "x"}]')
    with pytest.raises(DataError, match="has no 'output' field"):
        finetune(tiny_finetune(tmp_path / "bad.json", tmp_path / "out.safetensors"))


def test_records_too_long_for_the_context_are_skipped_then_too_few_is_an_error(tmp_path: Path) -> None:
    records = [{"instruction": f"Say {i}", "input": "", "output": "ok"} for i in range(40)]
    records[3]["output"] = "word " * 300  # longer than the 128-token context: skipped, not cut
    (tmp_path / "data.json").write_text(json.dumps(records))
    result = finetune(tiny_finetune(tmp_path / "data.json", tmp_path / "a.safetensors", max_steps=1))
    assert result.examples["train"] == 33 and result.examples["skipped"] == 1
    with pytest.raises(FinetuneError, match="less than one batch of 8"):
        short_context = {**SHAPE, "context_length": 16}
        finetune(tiny_finetune(tmp_path / "data.json", tmp_path / "b.safetensors", shape=short_context))


def test_start_options_are_checked(small_data: Path, tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="exactly one of"):
        finetune(tiny_finetune(small_data, tmp_path / "x", init=None))
    with pytest.raises(FinetuneError, match="shape comes from the checkpoint"):
        finetune(tiny_finetune(small_data, tmp_path / "x", checkpoint=tmp_path / "c.safetensors", init=None))


def test_a_fresh_model_is_the_same_for_the_same_seed(small_data: Path, tmp_path: Path) -> None:
    config = tiny_finetune(small_data, tmp_path / "x")
    a, b = build_model(config, "cpu"), build_model(config, "cpu")
    assert isinstance(a, GPTModel) and all(
        torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )

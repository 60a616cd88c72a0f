"""A small masked-LM training run that turns the MiniLM VideoBERT of the tests into a *trained* one.

``VideoBert.from_bert`` on all-MiniLM-L6-v2 gives an encoder trained for sentence embeddings and a
masked-LM head that was never trained (the checkpoint ships none): its word ranking at a
``[MASK]`` has tiny margins and says little about what INT8 does to a real VideoBERT. A couple of
minutes of VideoBERT's own objective (masked words and masked visual tokens over
``[CLS] visual [>] sentence [SEP]``) on the built-in kitchen sentences gives a model whose
predictions mean something: it is what the INT8 benchmark measures (docs/int8.md).

Not part of the SDK (vbedge runs trained models, it does not train them); used by
``benchmarks/bench_int8_cpu.py``. Needs torch (the export extra).
"""

from __future__ import annotations

import time

import numpy as np

#: Sentences ``kitchen_sentences(..., seed=0)`` hands out first are kept for calibration and
#: held-out evaluation (``calibrate_models`` and the benchmark's study take at most 200 of them);
#: training uses only the ones after them.
RESERVED_SENTENCES = 200


def markov_visual_sequences(num_leaves, count, seed=0, stay=0.7, max_len=6):
    """Visual-word sequences where consecutive clips keep their word with probability ``stay``.

    Consecutive clips of a video often fall into the same visual word; a masked visual token is
    then predictable from its neighbours, as in real video.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        current, seq = int(rng.integers(num_leaves)), []
        for _ in range(int(rng.integers(1, max_len + 1))):
            seq.append(current)
            if rng.random() > stay:
                current = int(rng.integers(num_leaves))
        out.append(seq)
    return out


def train_mlm(videobert, *, steps=150, batch=32, lr=1e-4, mask_fraction=0.15, sentences=1600, seed=0,
              log=print):
    """Train ``videobert`` (in place) on masked text and visual tokens; return the loss per step.

    Each example is ``[CLS] visual [>] sentence [SEP]`` with ``mask_fraction`` of its text and
    visual tokens (at least one) replaced by ``[MASK]``; the loss is cross-entropy at those
    positions (the decoder is tied to the embeddings, as in BERT). The model is left in eval mode.
    """
    import torch

    from vbedge.calib.readers import kitchen_sentences

    vocab = videobert.vocab
    texts = kitchen_sentences(RESERVED_SENTENCES + sentences, seed=0)[RESERVED_SENTENCES:]
    if not texts:
        raise ValueError("no training sentences left after the reserved ones")
    num_leaves = int(videobert.codebook_ref["num_leaves"])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    encoded = [list(vocab.encode_text(t)) for t in texts]
    visual_pool = markov_visual_sequences(num_leaves, 4096, seed=seed)

    def example(pieces):
        visual = [int(vocab.visual_token_id(leaf)) for leaf in visual_pool[int(rng.integers(len(visual_pool)))]]
        ids = [vocab.cls_id, *visual, vocab.separator_id, *pieces, vocab.sep_id]
        types = [0] + [1] * (len(visual) + 1) + [0] * (len(pieces) + 1)
        candidates = [i for i in range(1, len(ids) - 1) if ids[i] != vocab.separator_id]
        labels = [-100] * len(ids)
        for p in rng.choice(candidates, max(1, int(round(len(candidates) * mask_fraction))), replace=False):
            labels[p], ids[p] = ids[p], vocab.mask_id
        return ids, types, labels

    model = videobert.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        rows = [example(encoded[i]) for i in rng.choice(len(encoded), min(batch, len(encoded)), replace=False)]
        length = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), length), vocab.pad_id, dtype=torch.long)
        types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (a, b, c) in enumerate(rows):
            ids[i, :len(a)], types[i, :len(b)], labels[i, :len(c)] = torch.tensor(a), torch.tensor(b), torch.tensor(c)
            mask[i, :len(a)] = 1
        hidden = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        picked = labels != -100
        # Logits only at the masked positions: the full (batch, seq, vocab) tensor is 7x the work.
        loss = torch.nn.functional.cross_entropy(model.cls.predictions(hidden[picked]), labels[picked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log and (step % 25 == 0 or step == steps - 1):
            log(f"  mlm step {step + 1}/{steps}: loss {losses[-1]:.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    videobert.init_info["mlm_training"] = {"steps": steps, "batch": batch, "lr": lr, "seed": seed,
                                           "sentences": len(texts), "final_loss": losses[-1] if losses else None}
    return losses

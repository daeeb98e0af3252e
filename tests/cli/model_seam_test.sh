#!/usr/bin/env bash
# The model seam (docs/architecture.md): no file of the trainer, the
# distributed layer or the federated extension names a model ("gpt",
# gpt_..., kGpt...) or branches on a model's name; what they know of a
# model comes from its ModelSpec. A model's own files live under
# trainer/models/. (The recipe's model section documents the built-in
# models' hyperparameters; that is data, not a branch.) Fails listing the
# offending lines.
set -euo pipefail
SRC=${1:?usage: model_seam_test.sh SOURCE_DIR}
cd "$SRC"
hits=$( (grep -rniwE 'gpt|gpt_[a-z0-9_]*|kGpt[A-Za-z0-9_]*' \
            --include='*.h' --include='*.cpp' --include='*.proto' trainer distributed federated
          grep -rnE '(==|!=) *"(mlp|cnn|resnet_small|hbp)"' \
            --include='*.h' --include='*.cpp' trainer distributed federated) \
        | grep -v '^trainer/models/' || true)
if [ -n "$hits" ]; then
  echo "files outside trainer/models/ name a model (use its ModelSpec instead):" >&2
  echo "$hits" >&2
  exit 1
fi
echo "model seam: no model named outside trainer/models/"

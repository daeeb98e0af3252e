#!/usr/bin/env python3
"""Writes tests/data/dp_vectors.json: epsilon of the Poisson-sampled Gaussian
mechanism composed over `steps` rounds, by Opacus' RDPAccountant and Google's
dp-accounting RdpAccountant (each with its own default RDP orders), for the
(q, z, steps, delta) vectors below; and Opacus' noise multiplier for a few
(target epsilon, delta, q, steps). federated/accountant.h must agree with
both to 1% (tests/federated/accountant_test.cpp).

  python3 -m venv --system-site-packages /tmp/dpvenv
  /tmp/dpvenv/bin/pip install opacus==1.4.0 dp-accounting
  /tmp/dpvenv/bin/python tests/data/dp_vectors.py > tests/data/dp_vectors.json
"""
import json
import sys

import dp_accounting
import opacus
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

# (q, z, steps, delta)
VECTORS = [
    (0.04, 1.5, 2250, 1e-5),          # Opacus' own test: 7.329
    (256 / 60000, 1.3, 4688, 1e-5),   # Abadi et al. MNIST, 20 epochs
    (256 / 60000, 0.7, 16406, 1e-5),  # 70 epochs
    (2048 / 60000, 2.15, 1172, 1e-5), # Tramer & Boneh Fashion-MNIST, eps 3
    (0.1, 1.0, 100, 1e-5),            # federated: 100 of 1,000 clients per round
    (0.1, 0.5, 50, 1e-5),
    (0.01, 1.1, 1000, 1e-6),
    (0.2, 0.8, 30, 1e-3),
    (0.001, 0.6, 10000, 1e-5),
    (0.05, 2.0, 5000, 1e-5),
    (0.1, 5.0, 1, 1e-5),
    (0.02, 0.9, 2000, 1e-5),
    (1.0, 10.0, 10, 1e-5),            # every client, every round
    (0.5, 3.0, 200, 1e-5),
]
# (target epsilon, delta, q, steps)
PLANS = [(8.0, 1e-5, 0.04, 2250), (3.0, 1e-5, 0.1, 200), (1.0, 1e-5, 0.1, 100), (8.0, 1e-5, 0.01, 5000)]


def opacus_eps(q, z, steps, delta):
    acc = RDPAccountant()
    acc.history = [(z, q, steps)]
    return acc.get_epsilon(delta=delta)


def dpa_eps(q, z, steps, delta):
    acc = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    acc.compose(event, steps)
    return acc.get_epsilon(delta)


out = {
    "generated_by": "tests/data/dp_vectors.py",
    "opacus": opacus.__version__,
    "dp_accounting": getattr(dp_accounting, "__version__", "unknown"),
    "vectors": [
        {"q": q, "z": z, "steps": s, "delta": d,
         "opacus_epsilon": opacus_eps(q, z, s, d), "dp_accounting_epsilon": dpa_eps(q, z, s, d)}
        for q, z, s, d in VECTORS
    ],
    "plans": [
        {"target_epsilon": e, "delta": d, "q": q, "steps": s,
         "opacus_noise_multiplier": get_noise_multiplier(
             target_epsilon=e, target_delta=d, sample_rate=q, steps=s, accountant="rdp",
             epsilon_tolerance=0.001)}
        for e, d, q, s in PLANS
    ],
}
json.dump(out, sys.stdout, indent=1)
print()

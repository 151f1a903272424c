"""Instructions a virtual key adds per request, in process: the app with an instant provider
(``gateway_overhead/policy_cost.py``), a key with the limits the variant names.

    for v in master plain rpm budget all; do for n in 1000 3000; do
      PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/budgets/access_cost.py $v $n 2>&1 | awk -v v=$v '/Collected/{print v, $4}'
    done; done

Per request: (instructions at 3000 minus at 1000) / 2000, which cancels start-up and warm-up.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway_overhead"))

import policy_cost

from tokenway.app import Gateway
from tokenway.keys import key_record, new_key

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "rpm": {"rpm": 10**9},
    "budget": {"budget": {"amount": 10**6, "period": "day"}},
    "all": {"rpm": 10**9, "tpm": 10**12, "budget": {"amount": 10**6, "period": "day"}},
}


def main(variant: str, requests: int) -> None:
    fields = VARIANTS.get(variant, {})

    async def create_key(app: Gateway) -> str:
        secret, key_id = new_key()
        await app.access.db.put_key(key_record(secret, key_id, models=["mock-json"], **fields))
        await app.access.keys.refresh()
        return secret

    policy_cost.create_virtual_key = create_key
    key = "sk-m" if variant == "master" else "virtual"
    asyncio.run(policy_cost.run_variant(variant, "logging: {requests: false}\n", {"master_key": "sk-m"}, key,
                                        requests))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

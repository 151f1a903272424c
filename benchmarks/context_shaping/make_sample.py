"""Write ``conversations.jsonl``: the multi-turn sample the context-shaping benchmark replays.

Synthetic, seeded and reproducible: 40 support and planning conversations of 3 to 30 turns, each a
system prompt, user questions of a sentence to a pasted log, assistant answers of a few paragraphs,
and, in about a third of the turns, tool calls whose JSON results come back before the answer. The
lengths follow what chat traffic looks like (most turns short, a few long pastes), which is what
decides how much trimming or summarising saves; the words themselves are filler.

    python benchmarks/context_shaping/make_sample.py   # rewrites conversations.jsonl beside it
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TOPICS = ["a failed database migration", "a trip to Lisbon in May", "the quarterly sales report", "a flaky CI job",
          "a customer's refund request", "onboarding a new engineer", "a memory leak in the API server",
          "choosing a laptop for video editing", "the kitchen renovation budget", "a grant proposal draft"]
SENTENCES = [
    "I checked the logs again and the error shows up right after the nightly job starts.",
    "Could you explain why the second option would be cheaper over a full year?",
    "The numbers in the spreadsheet do not match what the dashboard reports for March.",
    "We already tried restarting the service, and the problem came back within an hour.",
    "Here is what my manager asked for, word for word, in the meeting this morning.",
    "Let me know if the plan still works when the budget is cut by fifteen percent.",
    "That makes sense, but the vendor says their limit is per account, not per project.",
    "The team in Berlin reported the same behaviour on their staging cluster yesterday.",
    "Please keep the answer short, I need to paste it into a ticket.",
    "What would you change first if you had only one afternoon for this?",
    "The previous summary missed the part about the contract renewal date.",
    "My colleague thinks the cache is to blame, since the timings jump after every deploy.",
]
ANSWERS = [
    "The most likely cause is the connection pool running out while the batch job holds its connections.",
    "Over twelve months the second option saves roughly the cost of one additional license.",
    "The dashboard counts refunds on the day they are issued, while the spreadsheet uses the order date.",
    "A restart only clears the symptom; the growth in memory points at objects kept by the request cache.",
    "I would start with the smallest change that can be measured, then compare the next two days.",
    "If the limit is per account, splitting the workload across projects will not raise it.",
    "The staging cluster runs the same image, so the behaviour there is a useful second data point.",
    "Here is a shorter version you can paste: the fix is scheduled for Thursday, with a rollback plan ready.",
    "With fifteen percent less, the plan still works if the second phase moves to the next quarter.",
    "The renewal date is the first of September, ninety days' notice are needed to change the terms.",
]
LOG_LINE = "2026-11-{day:02d}T{hour:02d}:{minute:02d}:17Z ERROR worker-{worker} job={job} retry={retry} " \
           "msg=\"timeout waiting for connection from pool (size=20, in use=20, waiting={waiting})\""


def user_text(rng: random.Random, topic: str, turn: int) -> str:
    if turn == 0:
        return f"I need help with {topic}. " + " ".join(rng.sample(SENTENCES, 2))
    if rng.random() < 0.12:  # a pasted log or document
        lines = [LOG_LINE.format(day=rng.randint(1, 28), hour=rng.randint(0, 23), minute=rng.randint(0, 59),
                                 worker=rng.randint(1, 9), job=rng.randint(1000, 9999), retry=rng.randint(0, 5),
                                 waiting=rng.randint(1, 200)) for _ in range(rng.randint(15, 60))]
        return "Here is what I see:\n" + "\n".join(lines)
    return " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))


def assistant_text(rng: random.Random) -> str:
    paragraphs = [" ".join(rng.sample(ANSWERS, rng.randint(2, 4))) for _ in range(rng.randint(1, 3))]
    return "\n\n".join(paragraphs)


def tool_exchange(rng: random.Random, turn: int) -> list[dict[str, Any]]:
    calls = []
    for j in range(rng.randint(1, 2)):
        name = rng.choice(["search_tickets", "get_invoice", "query_metrics"])
        calls.append({"id": f"call_{turn}_{j}", "type": "function",
                      "function": {"name": name, "arguments": json.dumps({"query": rng.choice(TOPICS), "limit": 5})}})
    out: list[dict[str, Any]] = [{"role": "assistant", "content": None, "tool_calls": calls}]
    for call in calls:
        rows = [{"id": rng.randint(10_000, 99_999), "status": rng.choice(["open", "closed", "pending"]),
                 "title": rng.choice(SENTENCES), "amount": round(rng.uniform(10, 5000), 2)}
                for _ in range(rng.randint(2, 8))]
        out.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"results": rows})})
    return out


def conversation(rng: random.Random, index: int) -> list[dict[str, Any]]:
    topic = TOPICS[index % len(TOPICS)]
    messages: list[dict[str, Any]] = [{"role": "system", "content": (
        f"You are the assistant of a small company. You help with {topic}. Be precise and brief, cite the tool "
        "results you used, and say when you are not sure.")}]
    for turn in range(rng.randint(3, 30)):
        messages.append({"role": "user", "content": user_text(rng, topic, turn)})
        if rng.random() < 0.33:
            messages += tool_exchange(rng, turn)
        messages.append({"role": "assistant", "content": assistant_text(rng)})
    return messages


def main() -> None:
    rng = random.Random(23)
    path = Path(__file__).with_name("conversations.jsonl")
    with path.open("w") as out:
        for index in range(40):
            out.write(json.dumps({"id": f"conv-{index:02d}", "messages": conversation(rng, index)}) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

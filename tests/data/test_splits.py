from lorakit.data.records import Conversation, Message
from lorakit.data.splits import split_conversations


def _conversations(n, duplicates=0):
    made = [Conversation((Message("user", f"q{i}"), Message("assistant", f"a{i}"))) for i in range(n)]
    return made + [Conversation((Message("user", "q0"), Message("assistant", "a0")), line=999)] * duplicates


def test_split_is_deterministic_and_order_independent():
    items = _conversations(50)
    first = split_conversations(items, 0.1, 0.2, seed=3)
    second = split_conversations(list(reversed(items)), 0.1, 0.2, seed=3)
    assert first == second
    assert first.sizes() == {"train": 35, "validation": 5, "test": 10}
    assert split_conversations(items, 0.1, 0.2, seed=4).test != first.test


def test_duplicates_never_straddle_splits():
    for seed in range(20):
        splits = split_conversations(_conversations(30, duplicates=3), 0.2, 0.2, seed=seed)
        homes = [name for name in ("train", "validation", "test")
                 if any(c.messages[0].content == "q0" for c in getattr(splits, name))]
        assert len(homes) == 1

"""What the ``infinite-former`` CLI runs: the sorting task (sort.py), long-document language
modeling (lm.py), the passkey probe (passkey.py) and document-grounded dialogue (dialogue.py). Each module holds its commands and their
parser; the flags map onto typed configs the same way (flags.py). Experiments may import every
other layer; nothing imports them but cli.py."""

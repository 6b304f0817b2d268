"""One module per tool; `base` holds the contract they share."""

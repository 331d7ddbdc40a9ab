"""One explicit state machine per resource, each a transition table."""

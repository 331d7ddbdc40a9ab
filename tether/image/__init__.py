"""Images: the registry, the tiny Linux image builder and its guest agent."""

"""Model backends. Import a concrete backend from its module; heavy libraries load in constructors only."""

from mediq_env.backends.base import Backend, Chat, Generation, Message, SamplingParams

__all__ = ["Backend", "Chat", "Generation", "Message", "SamplingParams"]

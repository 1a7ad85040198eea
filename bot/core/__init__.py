"""The platform-neutral core: what the bot does with a message, whichever platform it came from.

Adapters hand it an `Incoming` and a `Reply` (`bot.core.messages`); it never imports an adapter or a chat SDK.
"""

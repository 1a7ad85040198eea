"""A fake Slack for the Slack adapter's end-to-end tests: Web API, Socket Mode and signed HTTP requests."""

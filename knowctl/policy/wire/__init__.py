"""The request and answer shapes of the API surfaces beyond ``models/{m}:{action}``, read
without I/O: the Interactions API and the OpenAI-compatible endpoint (docs/wire.md has what
the official SDKs send and parse). ``knowctl.policy.framing`` holds generateContent's own."""

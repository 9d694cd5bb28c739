"""The upstream client (where a call goes, with which headers) and the gateway's credentials."""

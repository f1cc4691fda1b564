"""Small MCP servers shipped with the gateway, for the example config and demos."""

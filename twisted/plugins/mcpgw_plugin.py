from twisted.application.service import ServiceMaker

MCPGateway = ServiceMaker("MCP Gateway", "mcpgw.tap", "Gateway for MCP servers.", "mcp-gateway")

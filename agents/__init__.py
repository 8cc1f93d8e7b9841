"""Agent drivers other than Claude's stream-json one (`bot.session`): each an
`bot.agent.AgentSession` that only the composition root (`bot.app`, `bot.cli`) builds."""

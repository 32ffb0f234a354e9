from agentlibos.cli import main

main()

from agentlibos.entry import main

main()

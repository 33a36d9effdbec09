"""An embedded local stack for the demo and the tests: a private redis-server, a LiveKit dev server (inside a
network namespace of its own when run as root, else on loopback), and a simulated caller (a real rtc
participant). Nothing here sends a packet anywhere but loopback or a namespace it created itself."""

"""The censorship lab: network namespaces on one machine with a real censor between a client
and real servers (dnsmasq, nginx), so every blocking method can be reproduced offline.

Guarantees: nothing joins the host's network namespace; every namespace, file and process the
lab creates is recorded in a manifest as it is created, so ``down`` (or a failed ``up``)
removes exactly those and nothing else.
"""

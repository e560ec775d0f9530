"""callbackd: the CallBack engine.

Takes a trigger from the SIP edge, calls the employee back from the DID,
collects the client's number by DTMF, calls the client and bridges both legs
through RTPengine, and writes one CDR line per callback.
"""

"""A study-level C-FIND by GDCM's network library, run by the system Python (python3-gdcm).

    /usr/bin/python3 tests/gdcm_find.py HOST PORT CALLING CALLED GGGG,EEEE=VALUE ...

Prints one JSON line: whether GDCM called the C-FIND a success, and for each answer it
returned, its Patient ID and whether command elements (group 0000) leaked into it. The
line is printed before the association is released: GDCM 3.0.21's release may abort.
"""

import json
import os
import sys

import gdcm

PATIENT_ID = gdcm.Tag(0x0010, 0x0020)
COMMAND_FIELD = gdcm.Tag(0x0000, 0x0100)


def text_of(dataset: "gdcm.DataSet", tag: "gdcm.Tag") -> str | None:
    """An element's value as text, or None if the answer lacks it."""
    if not dataset.FindDataElement(tag):
        return None
    value = dataset.GetDataElement(tag).GetByteValue()
    return str(value.GetBuffer()).strip(" \0") if value else ""


def main() -> None:
    host, port, calling, called, *keys = sys.argv[1:]
    pairs = gdcm.KeyValuePairArrayType()
    for key in keys:
        tag, value = key.split("=", 1)
        group, element = (int(part, 16) for part in tag.split(","))
        pairs.append(gdcm.KeyValuePairType(gdcm.Tag(group, element), value))
    query = gdcm.CompositeNetworkFunctions.ConstructQuery(gdcm.eStudyRootType, gdcm.eStudy, pairs)
    user = gdcm.ServiceClassUser()
    user.SetHostname(host)
    user.SetPort(int(port))
    user.SetTimeout(10)
    user.SetAETitle(calling)
    user.SetCalledAETitle(called)
    contexts = gdcm.PresentationContextGenerator()
    if not (user.InitializeConnection()
            and contexts.GenerateFromUID(gdcm.UIDs.StudyRootQueryRetrieveInformationModelFIND)):
        sys.exit("GDCM could not connect")
    user.SetPresentationContexts(contexts.GetPresentationContexts())
    if not user.StartAssociation():
        sys.exit("GDCM's association was not accepted")
    answers = gdcm.DataSetArrayType()
    ok = user.SendFind(query, answers)
    found = [{"patient_id": text_of(answer, PATIENT_ID),
              "command_elements": bool(answer.FindDataElement(COMMAND_FIELD))}
             for answer in answers]
    print(json.dumps({"ok": bool(ok), "answers": found}), flush=True)
    user.StopAssociation()
    os._exit(0)  # GDCM's destructors may abort after a release


if __name__ == "__main__":
    main()

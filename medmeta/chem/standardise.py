"""One compound's structure, standardised: its parent's canonical SMILES and InChIKey (RDKit).

The steps (``rdMolStandardize``, the same as ChEMBL's parent rules in spirit):

1. parse the SMILES (a blank or unreadable one: ``unparseable_smiles``);
2. ``Cleanup``: remove explicit hydrogens, disconnect metals, normalise functional groups, reionise;
3. salts and mixtures: RDKit's default salt and solvent fragments are stripped
   (``FragmentRemover``); of what is left, fragments without carbon are dropped (counter-ions such as
   Na+, Cl-, sulfate); the largest remaining fragment (heavy atoms) is the parent. When two *different*
   fragments share the largest size the measured compound is unknown: ``ambiguous_mixture``; when no
   carbon fragment is left: ``no_organic_fragment``. A kept parent from a multi-fragment SMILES is
   reported with ``stripped = True`` (counted per file as ``fragments_stripped``);
4. ``Uncharger``: neutralised where a neutral form exists (a carboxylate protonated, an ammonium
   deprotonated; a quaternary ammonium keeps its charge);
5. canonical isomeric SMILES, and the InChIKey of that parent (``compound_key``).

RDKit's own log lines quote the input SMILES: they are switched off here, and failures become a
``Rejected`` whose message names no structure. RDKit is imported when the first structure is
standardised, never by the CLI's start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from medmeta.errors import AMBIGUOUS_MIXTURE, NO_ORGANIC_FRAGMENT, UNPARSEABLE_SMILES, Rejected


@dataclass(frozen=True)
class Standardised:
    smiles: str  # canonical isomeric SMILES of the parent
    compound_key: str  # InChIKey of the parent
    stripped: bool  # other fragments (salts, solvents, counter-ions) were removed


@lru_cache(maxsize=1)
def _tools():
    from rdkit import Chem, RDLogger
    from rdkit.Chem.MolStandardize import rdMolStandardize

    RDLogger.DisableLog("rdApp.*")  # its messages quote the input
    return (Chem, rdMolStandardize.FragmentRemover(), rdMolStandardize.Uncharger(), rdMolStandardize.Normalizer(),
            rdMolStandardize.Reionizer(), rdMolStandardize.MetalDisconnector())


def _cleanup(Chem, normalizer, reionizer, metals, mol):
    """``rdMolStandardize.Cleanup`` with its tools built once (it builds a Normalizer per call)."""
    mol = Chem.Mol(Chem.RemoveHs(mol))
    metals.Disconnect(mol)
    mol = reionizer.reionize(normalizer.normalize(mol))
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    return mol


def standardise(smiles: str) -> Standardised:
    """The standardised parent of ``smiles``; ``Rejected`` (a reason above) when there is none."""
    found = _standardised(str(smiles or "").strip())
    if isinstance(found, Rejected):
        raise found
    return found


@lru_cache(maxsize=100_000)  # per process: the same compound in several tables of one ingest
def _standardised(text: str) -> Standardised | Rejected:
    try:
        return _standardise(text)
    except Rejected as error:
        return error


def _standardise(text: str) -> Standardised:
    Chem, remover, uncharger, normalizer, reionizer, metals = _tools()
    mol = Chem.MolFromSmiles(text) if text else None
    if mol is None or mol.GetNumAtoms() == 0:
        raise Rejected(UNPARSEABLE_SMILES, "the SMILES is blank or RDKit can not parse it")
    try:
        mol = _cleanup(Chem, normalizer, reionizer, metals, mol)
    except Exception:  # RDKit raises its own types for a structure it can not sanitise
        raise Rejected(UNPARSEABLE_SMILES, "RDKit can not sanitise the structure") from None
    fragments = Chem.GetMolFrags(mol, asMols=True)
    stripped = len(fragments) > 1
    if stripped:
        mol = _parent_fragment(Chem, remover, mol)
    mol = uncharger.uncharge(mol)
    key = Chem.MolToInchiKey(mol)
    if not key:
        raise Rejected(UNPARSEABLE_SMILES, "no InChI can be computed for the structure")
    return Standardised(Chem.MolToSmiles(mol), key, stripped)


def _parent_fragment(Chem, remover, mol):
    kept = remover.remove(mol)
    candidates = Chem.GetMolFrags(kept, asMols=True) if kept.GetNumAtoms() else ()
    organic = [f for f in candidates if any(a.GetAtomicNum() == 6 for a in f.GetAtoms())]
    if not organic:  # the remover took everything (a salt list entry alone): look again at the input
        organic = [f for f in Chem.GetMolFrags(mol, asMols=True) if any(a.GetAtomicNum() == 6 for a in f.GetAtoms())]
    if not organic:
        raise Rejected(NO_ORGANIC_FRAGMENT, "no fragment of the structure holds carbon (only salts or ions)")
    size = max(f.GetNumHeavyAtoms() for f in organic)
    largest = {Chem.MolToSmiles(f): f for f in organic if f.GetNumHeavyAtoms() == size}
    if len(largest) > 1:
        raise Rejected(AMBIGUOUS_MIXTURE, f"a mixture of {len(largest)} different fragments of the same largest "
                                          "size: which one was measured is unknown")
    return next(iter(largest.values()))


def standardise_all(smiles: list[str]) -> list[Standardised | Rejected]:
    """``standardise`` of each, a ``Rejected`` in place of a failure (a SMILES seen before in this process
    is standardised once)."""
    return [_standardised(str(text or "").strip()) for text in smiles]

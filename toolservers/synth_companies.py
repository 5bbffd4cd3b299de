"""Fictional issuers and per-sector settings for the synthetic filings corpus."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["COMPANIES", "SECTORS", "Company", "Sector"]


@dataclass(frozen=True)
class Company:
    name: str
    ticker: str
    sector: str
    hq: str

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


# Look-alike names are deliberate: agents must not confuse near-identical issuers.
_COMPANY_TABLE = """\
Henderson Industries|HNDI|industrials|Cleveland, Ohio
Henderson Holdings|HNDH|consumer|Pittsburgh, Pennsylvania
Apex Materials|APXM|materials|Houston, Texas
Apex Materials Group|APXG|materials|Baton Rouge, Louisiana
Northwind Energy|NWEN|energy|Tulsa, Oklahoma
Northwind Energy Partners|NWEP|energy|Denver, Colorado
Meridian Health|MRDH|healthcare|Nashville, Tennessee
Meridian Health Systems|MHSY|healthcare|Louisville, Kentucky
Cobalt Logistics|CBLT|logistics|Memphis, Tennessee
Cobalt Logistics International|CBLI|logistics|Savannah, Georgia
Vantage Software|VNTS|technology|Austin, Texas
Vantage Systems|VNTY|technology|Raleigh, North Carolina
Bluegate Foods|BLGF|consumer|Minneapolis, Minnesota
Bluegate Food Group|BLGG|consumer|Kansas City, Missouri
Quillfeather Analytics|QFAN|technology|Portland, Oregon
Harborview Medical Devices|HBMD|healthcare|Boston, Massachusetts
Granite Peak Minerals|GPKM|materials|Salt Lake City, Utah
Silverline Rail|SLRL|logistics|Omaha, Nebraska
Corvid Aerospace|CRVD|industrials|Wichita, Kansas
Lumenfield Optics|LMFO|technology|Rochester, New York
Prairie Wind Power|PRWP|energy|Des Moines, Iowa
Westbrook Apparel|WBAP|consumer|Charlotte, North Carolina
Stonebridge Chemicals|SBCH|materials|Wilmington, Delaware
Kestrel Robotics|KSTR|industrials|Ann Arbor, Michigan
Bellwether Pharmaceuticals|BLWP|healthcare|Princeton, New Jersey
Driftwood Outdoor|DRFT|consumer|Boise, Idaho
Ironclad Fasteners|IRCF|industrials|Milwaukee, Wisconsin
Palisade Networks|PLSN|technology|San Jose, California
Sable Creek Energy|SBCE|energy|Midland, Texas
Marlow Freight|MRLF|logistics|Indianapolis, Indiana
Cedar Row Home|CDRH|consumer|Grand Rapids, Michigan
Aurora Biologics|AURB|healthcare|San Diego, California
Halcyon Cloud|HLCN|technology|Seattle, Washington
Thornbury Packaging|THPK|materials|Atlanta, Georgia
Copperline Utilities|CPLU|energy|Phoenix, Arizona
Redfern Instruments|RDFI|industrials|Albany, New York
Wren & Lowell Furniture|WRLF|consumer|High Point, North Carolina
Galloway Diagnostics|GLWD|healthcare|Columbus, Ohio
Falconer Steel|FLCS|materials|Gary, Indiana
Nimbus Data Works|NMDW|technology|Boulder, Colorado
Larkspur Transit|LKSP|logistics|Sacramento, California
Brightwater Dairy|BWDY|consumer|Madison, Wisconsin
Tamarack Tooling|TMRK|industrials|Rockford, Illinois
Osprey Marine Logistics|OSML|logistics|Norfolk, Virginia
"""
COMPANIES: tuple[Company, ...] = tuple(
    Company(*line.split("|")) for line in _COMPANY_TABLE.splitlines() if line
)


@dataclass(frozen=True)
class Sector:
    label: str
    activity: str  # completes "The company ..."
    customers: str
    segments: tuple[str, ...]
    seasonality: tuple[float, float, float, float]  # revenue multiplier per fiscal quarter
    gross_margin: tuple[float, float]  # ranges the per-company parameters are drawn from
    rd: tuple[float, float]
    sga: tuple[float, float]
    inventory_days: tuple[float, float]
    ppe_intensity: tuple[float, float]  # net PP&E / annual revenue


SECTORS: dict[str, Sector] = {
    "industrials": Sector(
        "Industrials",
        "designs and manufactures engineered components and industrial equipment",
        "aerospace, automotive and general industrial manufacturers",
        ("Motion Control", "Aerospace Components", "Fluid Systems", "Industrial Services"),
        (0.96, 1.02, 1.0, 1.04),
        (0.25, 0.4),
        (0.02, 0.05),
        (0.1, 0.16),
        (60, 100),
        (0.2, 0.4),
    ),
    "materials": Sector(
        "Materials",
        "produces specialty chemicals, engineered materials and coatings",
        "packaging, construction and consumer-goods producers",
        ("Specialty Chemicals", "Coatings", "Engineered Polymers", "Mineral Products"),
        (0.97, 1.04, 1.01, 0.98),
        (0.2, 0.35),
        (0.01, 0.03),
        (0.07, 0.12),
        (45, 80),
        (0.4, 0.8),
    ),
    "technology": Sector(
        "Technology",
        "develops software platforms, networking products and related services",
        "enterprises, public-sector agencies and service providers",
        ("Cloud Platforms", "Networking", "Professional Services", "Security Software"),
        (0.95, 0.99, 1.0, 1.08),
        (0.55, 0.78),
        (0.12, 0.25),
        (0.2, 0.35),
        (10, 30),
        (0.05, 0.15),
    ),
    "healthcare": Sector(
        "Healthcare",
        "develops and markets medical devices, diagnostics and therapeutics",
        "hospitals, clinical laboratories and physician practices",
        ("Medical Devices", "Diagnostics", "Pharmaceuticals", "Clinical Services"),
        (0.98, 1.0, 0.99, 1.05),
        (0.5, 0.7),
        (0.06, 0.15),
        (0.22, 0.32),
        (60, 120),
        (0.15, 0.3),
    ),
    "energy": Sector(
        "Energy",
        "produces, transports and markets natural gas, crude oil and renewable power",
        "utilities, refiners and large industrial energy users",
        ("Upstream", "Midstream", "Renewables", "Refining and Marketing"),
        (1.05, 0.96, 1.0, 1.0),
        (0.18, 0.38),
        (0.0, 0.01),
        (0.04, 0.08),
        (15, 35),
        (0.8, 1.6),
    ),
    "consumer": Sector(
        "Consumer",
        "designs, sources and sells branded consumer products",
        "mass retailers, grocery chains and consumers who buy online",
        ("Branded Products", "Private Label", "International", "Direct-to-Consumer"),
        (0.9, 0.95, 1.0, 1.2),
        (0.3, 0.5),
        (0.005, 0.02),
        (0.2, 0.32),
        (70, 120),
        (0.1, 0.25),
    ),
    "logistics": Sector(
        "Logistics",
        "provides freight transportation, warehousing and supply chain services",
        "retailers, manufacturers and e-commerce merchants",
        ("Truckload", "Intermodal", "Warehousing", "Freight Brokerage"),
        (0.95, 1.0, 1.02, 1.05),
        (0.14, 0.24),
        (0.002, 0.01),
        (0.06, 0.11),
        (2, 8),
        (0.4, 0.8),
    ),
}

// A few inline SVG icons (paths only: no icon font, no extra requests).
const base = "h-5 w-5 shrink-0";
type P = { className?: string };
const svg = (d: string) =>
  function Icon({ className = base }: P) {
    return (
      <svg className={className} viewBox="0 0 24 24" fill="none" stroke="currentColor" strokeWidth={1.8}
           strokeLinecap="round" strokeLinejoin="round" aria-hidden="true">
        <path d={d} />
      </svg>
    );
  };
export const PlusIcon = svg("M12 5v14M5 12h14");
export const MenuIcon = svg("M4 6h16M4 12h16M4 18h16");
export const SendIcon = svg("M5 12h14M13 6l6 6-6 6");
export const StopIcon = svg("M7 7h10v10H7z");
export const DotsIcon = svg("M5 12h.01M12 12h.01M19 12h.01");
export const SunIcon = svg("M12 4V2m0 20v-2m8-8h2M2 12h2m13.66-5.66 1.41-1.41M4.93 19.07l1.41-1.41m0-11.32L4.93 4.93m14.14 14.14-1.41-1.41M12 8a4 4 0 1 0 0 8 4 4 0 0 0 0-8z");
export const MoonIcon = svg("M21 12.8A9 9 0 1 1 11.2 3a7 7 0 0 0 9.8 9.8z");
export const KeyIcon = svg("M15 7a4 4 0 1 1-3.9 4.9L4 19v2h3v-2h2v-2h2l1.1-1.1A4 4 0 0 1 15 7z");
export const ChartIcon = svg("M4 20V10m6 10V4m6 16v-7m4 7H2");
export const SlidersIcon = svg("M4 6h10M18 6h2M4 12h4M12 12h8M4 18h12M20 18h0M14 4v4M8 10v4M16 16v4");
export const CloseIcon = svg("M6 6l12 12M18 6 6 18");

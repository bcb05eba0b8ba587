// Ferry's PrimeVue theme: Aura with Ferry's sky blue (the app icon's), tuned so that every text and
// control meets WCAG 2.1 AA contrast (4.5:1 for text) in the light and the dark theme. Aura's own light
// shades (sky-500 buttons, slate-500 muted text on grey, -600 message and toast texts, red-500 danger
// buttons) fall between 2.8:1 and 4.4:1; the dark theme needs lighter message and toast texts.
import { definePreset } from '@primeuix/themes';
import Aura from '@primeuix/themes/aura';

const SHADES = [50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 950];

/** A message's or toast's colours per severity: dark enough on its tinted background (light theme)… */
const lightSeverity = {
  info: '{blue.700}',
  success: '{green.700}',
  warn: '{yellow.800}',
  error: '{red.700}',
} as const;
/** …and light enough on it (dark theme). */
const darkSeverity = {
  info: '{blue.300}',
  success: '{green.400}',
  warn: '{yellow.400}',
  error: '{red.300}',
} as const;

function severityColors(
  colors: Record<keyof typeof lightSeverity, string>,
  extra: (c: string) => Record<string, unknown> = () => ({}),
): Record<string, Record<string, unknown>> {
  return Object.fromEntries(
    Object.entries(colors).map(([severity, c]) => [
      severity,
      { color: c, closeButton: { focusRing: { color: c } }, ...extra(c) },
    ]),
  );
}

export const FerryPreset = definePreset(Aura, {
  semantic: {
    primary: Object.fromEntries(SHADES.map((shade) => [shade, `{sky.${shade}}`])),
    // A focus ring that is easy to see.
    focusRing: { width: '2px', style: 'solid', color: '{primary.color}', offset: '2px' },
    colorScheme: {
      light: {
        // sky-700 on white is 5.9:1 (sky-500 was 2.8:1), and white on it the same.
        primary: {
          color: '{primary.700}',
          contrastColor: '#ffffff',
          hoverColor: '{primary.800}',
          activeColor: '{primary.900}',
        },
        highlight: {
          background: '{primary.50}',
          focusBackground: '{primary.100}',
          color: '{primary.800}',
          focusColor: '{primary.900}',
        },
        // slate-600: 7.6:1 on white, 6.9:1 on the panes' slate-100 title bars (slate-500 was 4.3:1 there).
        text: { mutedColor: '{surface.600}', hoverMutedColor: '{surface.700}' },
      },
    },
  },
  components: {
    button: {
      colorScheme: {
        light: {
          root: {
            danger: {
              background: '{red.700}',
              hoverBackground: '{red.800}',
              activeBackground: '{red.900}',
              borderColor: '{red.700}',
              hoverBorderColor: '{red.800}',
              activeBorderColor: '{red.900}',
              focusRing: { color: '{red.700}' },
            },
          },
          outlined: { danger: { color: '{red.700}', borderColor: '{red.300}' } },
          text: { danger: { color: '{red.700}' } },
        },
        dark: {
          outlined: { danger: { color: '{red.300}' } },
          text: { danger: { color: '{red.300}' } },
        },
      },
    },
    message: {
      colorScheme: {
        light: severityColors(lightSeverity, (c) => ({ outlined: { color: c }, simple: { color: c } })),
        dark: severityColors(darkSeverity, (c) => ({ outlined: { color: c }, simple: { color: c } })),
      },
    },
    toast: {
      colorScheme: {
        light: severityColors(lightSeverity),
        dark: severityColors(darkSeverity),
      },
    },
  },
});
